package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/replicate"
)

// schemaDoc is where the `view --json` schema is written down.
const schemaDoc = "../../docs/view-json.md"

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// jsonPaths adds to paths every key path in the JSON value v
// ("resources[].nodes[].behind_bytes"), and reports keys that are not
// snake_case.
func jsonPaths(t *testing.T, prefix string, v any, paths map[string]bool) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, sub := range v {
			if !snakeCase.MatchString(k) {
				t.Errorf("key %q at %q is not snake_case", k, prefix)
			}
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			paths[p] = true
			jsonPaths(t, p, sub, paths)
		}
	case []any:
		for _, sub := range v {
			jsonPaths(t, prefix+"[]", sub, paths)
		}
	}
}

// documentedPaths returns the field paths in the tables of the schema doc
// (first column, in backquotes).
func documentedPaths(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(schemaDoc)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z0-9_.\\[\\]]+)` \\|")
	out := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if m := row.FindStringSubmatch(l); m != nil {
			out[m[1]] = true
		}
	}
	if len(out) < 20 {
		t.Fatalf("%s documents only %d fields: is the table format unchanged?", schemaDoc, len(out))
	}
	return out
}

// detailStatus has what the other states lack: a verify, a finished
// sync, damage and a released node.
func detailStatus() *appliance.Status {
	st := viewStates()["consistent"]
	a := st.Resources[0].Replication
	a.Released = []replicate.Release{{Node: "gamma", Why: "it holds back more than retain_max (2 MiB)"}}
	a.Damage = []replicate.Damage{{Segment: seg1.Name, Offset: 4096, Reason: "bad checksum", Seen: t0, Count: 1, Quarantined: seg1.Name + ".damaged", Restored: true, Action: "an intact copy was fetched from beta"}}
	a.Emergency = &replicate.EmergencyState{At: endB, Marks: []replicate.Position{endB}, Since: t0, Chunks: 3}
	b := &st.Peers[0].Status.Resources[0]
	b.LastSync = &replicate.SyncProgress{State: replicate.SyncDone, Source: "alpha", Compared: 64 << 20, Total: 64 << 20, Started: t0.Add(-time.Minute)}
	b.Verify = &replicate.VerifyReport{ID: 1, State: replicate.VerifyDone, Repair: true, Scheduled: true, Source: "alpha", ChunkSize: 1 << 20,
		Compared: 64 << 20, Total: 64 << 20, Rechecked: 1, Differ: []uint64{3}, DifferCount: 1, Repaired: 1, Reconnects: 1,
		Started: t0.Add(-time.Minute), Finished: t0, ETASeconds: 1, Err: "x"}
	b.StoppedAtMark = &endB
	b.Detached = true
	st.Resources[0].ExportError = "x"
	st.Resources[0].Log.Err = "x"
	st.SyncRate = 1
	st.Deleted = []string{"old"}
	return st
}

// TestViewJSONSchema walks the JSON of `view --json` for every state and
// fails on a key that is not snake_case, on a key the schema doc does not
// list (a new or renamed field), and on a documented field that no state
// shows (a renamed or removed one).
func TestViewJSONSchema(t *testing.T) {
	doc := documentedPaths(t)
	states := viewStates()
	states["details"] = detailStatus()
	seen := map[string]bool{}
	for name, st := range states {
		b, err := json.Marshal(appliance.NewView(st, appliance.DefaultStaleAfter))
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if v["schema_version"] != float64(appliance.ViewSchemaVersion) {
			t.Errorf("%s: schema_version %v, want %d", name, v["schema_version"], appliance.ViewSchemaVersion)
		}
		jsonPaths(t, "", v, seen)
	}
	var undocumented, missing []string
	for p := range seen {
		if !doc[p] {
			undocumented = append(undocumented, p)
		}
	}
	for p := range doc {
		if !seen[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(undocumented)
	sort.Strings(missing)
	if len(undocumented) > 0 {
		t.Errorf("fields not in %s (document them, or bump ViewSchemaVersion if a field was renamed):\n%s", schemaDoc, strings.Join(undocumented, "\n"))
	}
	if len(missing) > 0 {
		t.Errorf("documented fields that `view --json` no longer prints (renamed or removed: bump ViewSchemaVersion and update %s):\n%s", schemaDoc, strings.Join(missing, "\n"))
	}
	if os.Getenv("THARSIS_PRINT_PATHS") != "" {
		all := slices.Sorted(func(yield func(string) bool) {
			for p := range seen {
				if !yield(p) {
					return
				}
			}
		})
		t.Log("\n" + strings.Join(all, "\n"))
	}
}
