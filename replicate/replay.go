package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"

	"github.com/tharsis/tharsis/blockdev"
)

// appliedFile is the name of the persisted applied position in the log dir.
const appliedFile = "applied"

// ReadApplied returns the applied position persisted in dir, or the zero
// Position when none was persisted yet.
func ReadApplied(fsys FS, dir string) (Position, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	b, err := readFile(fsys, filepath.Join(dir, appliedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, fmt.Errorf("read applied position: %w", err)
	}
	var p Position
	if err := json.Unmarshal(b, &p); err != nil {
		return Position{}, fmt.Errorf("%w: applied position file %s is unreadable (%v); run `tharsis invalidate RES` to resync this node",
			ErrCorrupt, filepath.Join(dir, appliedFile), err)
	}
	return p, nil
}

// WriteApplied persists p as the applied position of the log in dir
// (atomically and durably). The caller must have flushed the data device up
// to p first.
func WriteApplied(fsys FS, dir string, p Position) error {
	if fsys == nil {
		fsys = OSFS{}
	}
	b, _ := json.Marshal(p)
	if err := writeFileAtomic(fsys, filepath.Join(dir, appliedFile), append(b, '\n')); err != nil {
		return fmt.Errorf("persist applied position in %s: %w", dir, err)
	}
	return nil
}

// ReplayOptions configure Replay.
type ReplayOptions struct {
	FS       FS // nil: OSFS
	Resource string
	Logger   *slog.Logger
	// CutTornTail truncates a torn tail of the newest segment (primary
	// recovery). Without it a torn tail just ends the replay (a secondary
	// whose newest segment is still being fetched).
	CutTornTail bool
	// VerifyAll reads and checks every segment, also those before
	// from.Segment (whose records are not applied again). Without it they
	// are not read.
	VerifyAll bool
	// SkipDamagedApplied goes on past damage in records that are applied
	// already (before from): such segments are reported in
	// replayResult.damaged instead of failing the replay.
	SkipDamagedApplied bool
	// index, with VerifyAll, lists sealed segments checked before: those
	// wholly applied are not read if they still match (trustIndexed).
	index segIndex
}

// replayResult is what replayLog found.
type replayResult struct {
	n     int           // records applied
	bytes int64         // log bytes read after from
	last  Position      // end of the last record of the log (from if none)
	segs  []SegmentInfo // every segment; Records -1 where not scanned
	cut   int64         // torn bytes cut (or ignored) at the end
	zero  int64         // zero bytes (written ahead) cut (or ignored) at the end
	// trusted counts the segments taken from the index without a scan.
	trusted int
	// damaged lists damage in applied records (SkipDamagedApplied).
	damaged []*CorruptError
}

// Replay applies to data every record of the log in dir after from (by
// sequence number; records up to from.Seq are skipped, so replay is
// idempotent). It scans the segments from from.Segment on, and returns the
// number of records applied and the position of the end of the log. It does
// not flush data. Damage other than a torn tail of the newest segment returns
// an error wrapping ErrCorrupt.
func Replay(dir string, data blockdev.Device, from Position, opt ReplayOptions) (n int, last Position, err error) {
	r, err := replayLog(dir, data, from, opt)
	return r.n, r.last, err
}

func replayLog(dir string, data blockdev.Device, from Position, opt ReplayOptions) (replayResult, error) {
	fsys := opt.FS
	if fsys == nil {
		fsys = OSFS{}
	}
	logger := opt.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	res := replayResult{last: from}
	names, err := listSegments(fsys, dir)
	if err != nil {
		return res, fmt.Errorf("list log directory: %w", err)
	}
	var buf []byte
	prev := uint64(0)   // last sequence number seen in scanned segments
	maxSeq := uint64(0) // highest record of the scanned segments
	found := func(info SegmentInfo) {
		if info.LastSeq != 0 {
			maxSeq = max(maxSeq, info.LastSeq)
			if info.LastSeq > res.last.Seq {
				res.last = Position{Segment: info.Name.Seq, Offset: info.End, Seq: info.LastSeq}
			}
			prev = info.LastSeq
		}
	}
	for i, name := range names {
		path := filepath.Join(dir, name.String())
		if name.Seq < from.Segment && !opt.VerifyAll {
			// Applied long ago; kept for peers. Not read.
			info := SegmentInfo{Name: name, Records: -1, Sealed: true}
			if f, err := fsys.Open(path); err == nil {
				info.End, _ = f.Size()
				f.Close()
			}
			res.segs = append(res.segs, info)
			continue
		}
		newest := i == len(names)-1
		if e, ok := opt.index[name]; ok && opt.VerifyAll && !newest && whollyApplied(name, e, from) && (prev == 0 || e.FirstSeq == prev+1) {
			if info, ok := trustIndexed(fsys, path, name, e, &buf); ok {
				res.trusted++
				res.segs = append(res.segs, info)
				found(info)
				continue
			}
		}
		f, err := fsys.Open(path)
		if err != nil {
			return res, fmt.Errorf("open log segment: %w", err)
		}
		size, err := f.Size()
		if err != nil {
			f.Close()
			return res, fmt.Errorf("stat log segment %s: %w", path, err)
		}
		first := true
		var durable int64 // the applied position is durable (see "Invariants")
		if name.Seq == from.Segment {
			durable = from.Offset
		}
		replay := func(rec Record, end int64) error {
			if first && prev == 0 && rec.Seq > from.Seq+1 {
				return &CorruptError{File: path, Offset: end - int64(rec.EncodedSize()), Resource: opt.Resource,
					Reason: fmt.Sprintf("the log resumes at record %d but only records up to %d were applied (records %d..%d are missing)", rec.Seq, from.Seq, from.Seq+1, rec.Seq-1)}
			}
			first = false
			if rec.Seq <= from.Seq {
				return nil
			}
			if err := apply(data, rec); err != nil {
				return fmt.Errorf("replay record %d of %s: %w", rec.Seq, path, err)
			}
			res.n++
			res.bytes += int64(rec.EncodedSize())
			return nil
		}
		info, err := ScanSegment(f, size, name, ScanOptions{Newest: newest, PrevSeq: prev, Durable: durable, Path: path, Resource: opt.Resource, Buf: buf}, replay)
		if cerr, ok := corruptAt(err); ok && opt.SkipDamagedApplied &&
			(name.Seq < from.Segment || name.Seq == from.Segment && cerr.Offset < from.Offset) {
			// The damage lies in records the data device holds already:
			// what is not applied yet is read from the applied position.
			res.damaged = append(res.damaged, cerr)
			if name.Seq < from.Segment {
				info, err = SegmentInfo{Name: name, Records: -1, Sealed: true, End: size}, nil
				prev = 0
			} else {
				info, err = ScanSegment(f, size, name, ScanOptions{Newest: newest, Start: from.Offset, PrevSeq: from.Seq, Path: path, Resource: opt.Resource, Buf: buf}, replay)
				// It holds the applied records before Start too: it is
				// not empty, and may be sealed after them.
				info.Records = max(info.Records, 1)
				if info.LastSeq == 0 {
					info.LastSeq = from.Seq
				}
			}
		}
		if err != nil {
			f.Close()
			return res, err
		}
		found(info)
		if info.Torn > 0 || info.Zero > 0 {
			res.cut, res.zero = info.Torn, info.Zero
			if opt.CutTornTail {
				if info.Torn > 0 {
					logger.Warn("cutting the torn tail of the newest log segment (it was never acknowledged)",
						"segment", path, "offset", info.End, "bytes", info.Torn, "why", info.TornErr)
				} else {
					logger.Debug("cutting the zeros written ahead of the newest log segment's records", "segment", path, "offset", info.End, "bytes", info.Zero)
				}
				err = f.Truncate(info.End)
				if err == nil {
					err = f.Sync()
				}
				if err != nil {
					f.Close()
					return res, fmt.Errorf("cut the tail of %s at %d: %w", path, info.End, err)
				}
				info.Torn, info.Zero = 0, 0
			}
		}
		f.Close()
		res.segs = append(res.segs, info)
	}
	if maxSeq != 0 && maxSeq < from.Seq {
		return res, fmt.Errorf("%w: the applied position (%v) is past the end of the log in %s (record %d); the log lost records: run `tharsis invalidate %s` to resync this node",
			ErrCorrupt, from, dir, maxSeq, resName(opt.Resource))
	}
	return res, nil
}

func resName(r string) string {
	if r == "" {
		return "RES"
	}
	return r
}

// apply performs one record on the data device.
func apply(data blockdev.Device, rec Record) error {
	switch rec.Kind {
	case KindWrite:
		_, err := data.WriteAt(rec.Payload, rec.Offset)
		return err
	case KindTrim:
		return data.Trim(rec.Offset, rec.Length)
	case KindWriteZeroes:
		return data.WriteZeroes(rec.Offset, rec.Length)
	case KindResize:
		if rec.Length <= data.Size() {
			return nil // applied already (replay is idempotent)
		}
		rz, ok := data.(blockdev.Resizer)
		if !ok {
			return fmt.Errorf("the log resizes the device to %d bytes but the data device (%d bytes) cannot grow", rec.Length, data.Size())
		}
		if err := rz.Resize(rec.Length); err != nil {
			return fmt.Errorf("the log resizes the device to %d bytes: %w; grow the disk, then restart", rec.Length, err)
		}
		return nil
	case KindSegmentEnd, KindEmergency:
		return nil
	}
	return fmt.Errorf("unknown record kind %v", rec.Kind)
}
