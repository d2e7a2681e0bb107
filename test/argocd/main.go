// Runs devmig's Argo CD health checks the way Argo CD does: the object decoded into Lua tables as
// `obj`, the script run by gopher-lua (the interpreter Argo CD embeds), its returned table read as
// {status, message}. Test cases use Argo CD's layout: <group>/<Kind>/health.lua, health_test.yaml,
// testdata/. Prints one line per case and exits 1 if any differs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

type testFile struct {
	Tests []struct {
		HealthStatus struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"healthStatus"`
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health DIR (holding <group>/<Kind>/health.lua)")
		os.Exit(2)
	}
	scripts, _ := filepath.Glob(filepath.Join(os.Args[1], "*", "*", "health.lua"))
	sort.Strings(scripts)
	if len(scripts) == 0 {
		fmt.Fprintf(os.Stderr, "no */*/health.lua under %s\n", os.Args[1])
		os.Exit(2)
	}
	failed := 0
	for _, script := range scripts {
		dir := filepath.Dir(script)
		var tf testFile
		if err := readYAML(filepath.Join(dir, "health_test.yaml"), &tf); err != nil {
			fmt.Printf("FAIL %s: %v\n", dir, err)
			failed++
			continue
		}
		for _, t := range tf.Tests {
			var obj map[string]any
			if err := readYAML(filepath.Join(dir, t.InputPath), &obj); err != nil {
				fmt.Printf("FAIL %s/%s: %v\n", dir, t.InputPath, err)
				failed++
				continue
			}
			status, message, err := run(script, obj)
			ok := err == nil && status == t.HealthStatus.Status && message == t.HealthStatus.Message
			if !ok {
				failed++
				fmt.Printf("FAIL %s %s: got %q %q (err %v), want %q %q\n", dir, t.InputPath, status, message, err, t.HealthStatus.Status, t.HealthStatus.Message)
				continue
			}
			fmt.Printf("ok   %s %s: %s %q\n", filepath.Base(filepath.Dir(dir))+"/"+filepath.Base(dir), t.InputPath, status, message)
		}
	}
	if failed > 0 {
		fmt.Printf("%d failed\n", failed)
		os.Exit(1)
	}
}

func readYAML(path string, into any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, into)
}

func run(script string, obj map[string]any) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer l.Close()
	l.SetGlobal("obj", decode(l, obj))
	if err := l.DoFile(script); err != nil {
		return "", "", err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	out := map[string]string{}
	ret.ForEach(func(k, v lua.LValue) { out[k.String()] = v.String() })
	b, _ := json.Marshal(out)
	var hs struct{ Status, Message string }
	_ = json.Unmarshal(b, &hs)
	return hs.Status, hs.Message, nil
}

// decode turns JSON-shaped Go values into Lua values as Argo CD does: objects and arrays become
// tables (arrays 1-based), numbers LNumber, nil LNil.
func decode(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := l.NewTable()
		for k, e := range x {
			t.RawSetString(k, decode(l, e))
		}
		return t
	case []any:
		t := l.NewTable()
		for _, e := range x {
			t.Append(decode(l, e))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(x))
	}
}
