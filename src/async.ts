/** How `p` settled, if it did within `ms`; undefined if it had not by then. No timer outlives the wait. */
export async function settleWithin<T>(p: Promise<T>, ms: number): Promise<PromiseSettledResult<T> | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p.then((value): PromiseSettledResult<T> => ({ status: 'fulfilled', value }), (reason: unknown): PromiseSettledResult<T> => ({ status: 'rejected', reason })),
      new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms); }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
