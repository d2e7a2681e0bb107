# One image for both entry points: `devmig controller` and `devmig agent` (and `devmig holder`).
# Build: docker build -t devmig:dev .   (no Docker engine runs on the development machines; the
# rules that matter are checked by test/unit/dockerfile.test.ts)

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# koffi ships prebuilt binaries in its npm package: no compiler is needed, here or at run time.
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bin ./bin
# Then only what runs: no dev dependencies, no second Node binary (the `node` package pins the
# project's Node for npm scripts), and no type declarations or source maps (about 40 MiB of
# @kubernetes/client-node and the rest, read by editors and debuggers, never by `node`).
RUN npm run build && npm prune --omit=dev --no-audit --no-fund \
    && rm -rf node_modules/node node_modules/.bin/node \
    && find node_modules -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \) -delete

FROM node:24-bookworm-slim
LABEL org.opencontainers.image.title="devmig" \
      org.opencontainers.image.description="Live migration of VFIO device state between Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build --chown=root:root /src/package.json ./
COPY --from=build --chown=root:root /src/node_modules ./node_modules
COPY --from=build --chown=root:root /src/dist ./dist
COPY --from=build --chown=root:root /src/bin ./bin
# The controller runs as this unprivileged user (restricted Pod Security); the agent's pod spec
# decides what the part that opens /dev/vfio may do.
USER 65532:65532
ENTRYPOINT ["node", "/app/bin/devmig.js"]
CMD ["--help"]
