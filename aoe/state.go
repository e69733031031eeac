package aoe

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
)

// State is what initiators set on a target: the config string (Query
// Config set), the Mac Mask list and the reserve list (Reserve/Release).
// A target persists it in StateDir/aoe-e<shelf>.<slot>.json; the appliance
// also hands it from one node to the next, so that whichever node serves
// the shelf.slot enforces the same lists. In JSON (the file's format) MACs
// are strings and the config string is base64.
type State struct {
	Config  []byte
	Masks   []MAC
	Reserve []MAC
}

type persistedState struct {
	Config  []byte   `json:"config_string"`
	Masks   []string `json:"mac_mask"`
	Reserve []string `json:"reserve"`
}

// Equal reports whether s and o hold the same config string and lists.
func (s State) Equal(o State) bool {
	return string(s.Config) == string(o.Config) && slices.Equal(s.Masks, o.Masks) && slices.Equal(s.Reserve, o.Reserve)
}

// MarshalJSON implements json.Marshaler (the state file's format).
func (s State) MarshalJSON() ([]byte, error) {
	p := persistedState{Config: s.Config, Masks: []string{}, Reserve: []string{}}
	for _, m := range s.Masks {
		p.Masks = append(p.Masks, m.String())
	}
	for _, m := range s.Reserve {
		p.Reserve = append(p.Reserve, m.String())
	}
	return json.Marshal(p)
}

// UnmarshalJSON implements json.Unmarshaler. It refuses more than AoE
// allows: a config string over MaxConfigLen bytes, more than 32 masks or
// 255 reservations, or a malformed MAC.
func (s *State) UnmarshalJSON(b []byte) error {
	var p persistedState
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if len(p.Config) > MaxConfigLen || len(p.Masks) > maxMasks || len(p.Reserve) > 255 {
		return fmt.Errorf("more than AoE allows (config string <= %d bytes, <= %d masks, <= 255 reservations)", MaxConfigLen, maxMasks)
	}
	st := State{Config: p.Config}
	for _, list := range []struct {
		in  []string
		out *[]MAC
	}{{p.Masks, &st.Masks}, {p.Reserve, &st.Reserve}} {
		for _, v := range list.in {
			a, err := net.ParseMAC(v)
			if err == nil {
				var m MAC
				m, err = MACFrom(a)
				*list.out = append(*list.out, m)
			}
			if err != nil {
				return fmt.Errorf("bad MAC %q: %v", v, err)
			}
		}
	}
	*s = st
	return nil
}

func (st *targetState) export() State {
	return State{Config: slices.Clone(st.Config), Masks: slices.Clone(st.Masks), Reserve: slices.Clone(st.Reserve)}
}

func statePath(dir string, shelf uint16, slot uint8) string {
	return filepath.Join(dir, fmt.Sprintf("aoe-e%d.%d.json", shelf, slot))
}

// LoadState reads the persisted state of target eSHELF.SLOT in dir; ok is
// false when there is none.
func LoadState(dir string, shelf uint16, slot uint8) (st State, ok bool, err error) {
	ts, err := loadState(statePath(dir, shelf, slot))
	if err != nil || ts == nil {
		return State{}, false, err
	}
	return ts.export(), true, nil
}

// SaveState persists st as the state of target eSHELF.SLOT in dir
// (atomically: a temporary file, fsync, rename, fsync of dir). A target
// created afterwards starts from it; a target being served keeps its own.
func SaveState(dir string, shelf uint16, slot uint8, st State) error {
	return writeState(statePath(dir, shelf, slot), &targetState{Config: st.Config, Masks: st.Masks, Reserve: st.Reserve})
}

func loadState(path string) (*targetState, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read AoE state %s: %w", path, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("AoE state %s is unusable (%v); fix or remove it to start from the configured allow_macs", path, err)
	}
	return &targetState{Config: st.Config, Masks: st.Masks, Reserve: st.Reserve}, nil
}

func writeState(path string, st *targetState) error {
	b, _ := json.MarshalIndent(State{Config: st.Config, Masks: st.Masks, Reserve: st.Reserve}, "", "  ")
	return writeFileSync(path, append(b, '\n'))
}

func writeFileSync(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		if d, derr := os.Open(filepath.Dir(path)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	return err
}
