// health-check prints how Flux (kstatus) and Argo CD read an object's health, using the
// evaluators those tools run, not a re-implementation:
//
//   - kstatus: sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, what Flux's health checks,
//     `kubectl wait`-style tooling and Helm 4's --wait (kstatus watcher) use;
//   - Argo CD: a health.lua script run in github.com/yuin/gopher-lua the way argo-cd's
//     util/lua runLua/ExecuteHealthLua does (global `obj` decoded as Argo CD decodes it,
//     only the package, base, table and a safe os library unless -open-libs, a 1 s
//     deadline, the returned table encoded with layeh.com/gopher-json, statuses outside
//     Argo CD's set read as Unknown).
//
// Usage:
//
//	health-check -lua-dir DIR [FILE]   # object as YAML or JSON from FILE or stdin; prints one JSON line
//	health-check -test DIR             # run every health_test.yaml under DIR (Argo CD's layout)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// Health is Argo CD's health.HealthStatus as a Lua script returns it.
type Health struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Kstatus is the part of kstatus' Result that tools act on.
type Kstatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Output is what one object reads as.
type Output struct {
	Kstatus Kstatus `json:"kstatus"`
	ArgoCD  *Health `json:"argocd,omitempty"`
}

func main() {
	luaDir := flag.String("lua-dir", "", "directory in Argo CD's resource_customizations layout (<group>/<Kind>/health.lua)")
	testDir := flag.String("test", "", "run every health_test.yaml under this directory and exit")
	openLibs := flag.Bool("open-libs", false, "open all Lua standard libraries (Argo CD does for built-in scripts and its own tests; ConfigMap customizations run without unless useOpenLibs is set)")
	flag.Parse()
	if *testDir != "" {
		failed, err := runTests(*testDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "health-check:", err)
			os.Exit(2)
		}
		if failed > 0 {
			fmt.Fprintf(os.Stderr, "health-check: %d case(s) failed\n", failed)
			os.Exit(1)
		}
		return
	}
	var in io.Reader = os.Stdin
	if flag.NArg() > 0 && flag.Arg(0) != "-" {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, "health-check:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	}
	out, err := evaluate(in, *luaDir, *openLibs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "health-check:", err)
		os.Exit(2)
	}
	line, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "health-check:", err)
		os.Exit(2)
	}
	fmt.Println(string(line))
}

// readObject parses YAML or JSON into an Unstructured, with integers as int64 as the API
// machinery (and so Argo CD's controller) has them.
func readObject(in io.Reader) (*unstructured.Unstructured, error) {
	text, err := io.ReadAll(in)
	if err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(text)
	if err != nil {
		return nil, fmt.Errorf("parse object: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("decode object: %w", err)
	}
	return obj, nil
}

func evaluate(in io.Reader, luaDir string, openLibs bool) (*Output, error) {
	obj, err := readObject(in)
	if err != nil {
		return nil, err
	}
	res, err := status.Compute(obj)
	if err != nil {
		return nil, fmt.Errorf("kstatus: %w", err)
	}
	out := &Output{Kstatus: Kstatus{Status: res.Status.String(), Message: res.Message}}
	if luaDir != "" {
		gvk := obj.GroupVersionKind()
		script, err := os.ReadFile(filepath.Join(luaDir, gvk.Group, gvk.Kind, "health.lua"))
		if err != nil {
			return nil, err
		}
		h, err := executeHealthLua(obj.Object, string(script), openLibs)
		if err != nil {
			return nil, fmt.Errorf("health.lua: %w", err)
		}
		out.ArgoCD = h
	}
	return out, nil
}

// executeHealthLua follows argo-cd util/lua: VM.runLua then VM.ExecuteHealthLua.
func executeHealthLua(obj map[string]interface{}, script string, openLibs bool) (*Health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type().String())
	}
	js, err := luajson.Encode(ret)
	if err != nil {
		return nil, err
	}
	h := &Health{}
	if err := json.Unmarshal(js, h); err != nil {
		return nil, err
	}
	switch h.Status {
	case "Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing":
		return h, nil
	}
	return &Health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
}

// A safe os library: only os.time() (the current Unix time), the part of Argo CD's safe os
// (time, date) a health check could use. Our scripts use none of it.
func openSafeOs(l *lua.LState) int {
	tbl := safeOsTable(l)
	l.SetGlobal(lua.OsLibName, tbl)
	l.Push(tbl)
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(safeOsTable(l))
	return 1
}

func safeOsTable(l *lua.LState) *lua.LTable {
	return l.SetFuncs(l.NewTable(), map[string]lua.LGFunction{
		"time": func(l *lua.LState) int {
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		},
	})
}

// decodeValue turns the object into Lua values as Argo CD does (arrays 1-based, int64 and
// float64 as numbers, json.Number as a string, anything else nil).
func decodeValue(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// testFile is Argo CD's health_test.yaml.
type testFile struct {
	Tests []struct {
		InputPath    string  `json:"inputPath"`
		HealthStatus *Health `json:"healthStatus"`
	} `json:"tests"`
}

// runTests runs each health_test.yaml case against the health.lua next to it, with the
// standard libraries closed (a ConfigMap customization) and open (Argo CD's own test run);
// both must give the expected status and message. Prints one line per case.
func runTests(dir string) (int, error) {
	failed, found := 0, 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "health_test.yaml" {
			return err
		}
		here := filepath.Dir(path)
		script, err := os.ReadFile(filepath.Join(here, "health.lua"))
		if err != nil {
			return err
		}
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var tf testFile
		if err := yaml.Unmarshal(text, &tf); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, tc := range tf.Tests {
			found++
			if tc.HealthStatus == nil {
				return fmt.Errorf("%s: %s has no healthStatus", path, tc.InputPath)
			}
			f, err := os.Open(filepath.Join(here, tc.InputPath))
			if err != nil {
				return err
			}
			obj, err := readObject(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", tc.InputPath, err)
			}
			res, err := status.Compute(obj)
			if err != nil {
				return fmt.Errorf("%s: kstatus: %w", tc.InputPath, err)
			}
			for _, open := range []bool{false, true} {
				got, err := executeHealthLua(obj.Object, string(script), open)
				rel, _ := filepath.Rel(dir, filepath.Join(here, tc.InputPath))
				switch {
				case err != nil:
					failed++
					fmt.Printf("FAIL %s (open-libs=%v): %v\n", rel, open, err)
				case *got != *tc.HealthStatus:
					failed++
					fmt.Printf("FAIL %s (open-libs=%v): got %s %q, want %s %q\n", rel, open, got.Status, got.Message, tc.HealthStatus.Status, tc.HealthStatus.Message)
				case !open:
					fmt.Printf("ok   %s: argocd %s, kstatus %s\n", rel, got.Status, res.Status)
				}
			}
		}
		return nil
	})
	if err == nil && found == 0 {
		err = errors.New("no health_test.yaml cases under " + dir)
	}
	return failed, err
}
