package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// AutoPrefix starts the labels of automatic checkpoints.
const AutoPrefix = "auto-"

// SetPolicy stores volume name's automatic-checkpoint policy; the zero
// Policy turns automatic checkpoints off. Writers pick it up within a
// minute.
func (p *Pool) SetPolicy(ctx context.Context, name string, pol Policy) error {
	if err := pol.validate(); err != nil {
		return err
	}
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return err
	}
	doc := pol.doc()
	b, err := format.EncodeDoc(format.KindPolicy, &doc)
	if err != nil {
		return err
	}
	return p.store.Put(ctx, format.PolicyKey(d.ID), b)
}

// Policy returns volume id's policy (the zero policy if none is set).
func (p *Pool) Policy(ctx context.Context, id string) (Policy, error) {
	d, err := p.policyDoc(ctx, id)
	return policyOf(d), err
}

// policyDoc reads volume id's stored policy document.
func (p *Pool) policyDoc(ctx context.Context, id string) (format.CheckpointPolicy, error) {
	var pol format.CheckpointPolicy
	switch err := getDoc(ctx, p.store, format.PolicyKey(id), format.KindPolicy, &pol); {
	case errors.Is(err, objstore.ErrNotFound):
		return format.CheckpointPolicy{}, nil
	case err != nil:
		return pol, fmt.Errorf("read policy: %w", err)
	}
	return pol, nil
}

// autoLabel names an automatic checkpoint taken at t.
func autoLabel(t time.Time) string { return AutoPrefix + t.UTC().Format("20060102T150405Z") }

// pruneAuto decides which automatic checkpoints to delete: it keeps the
// newest of each of the KeepHourly most recent hours and of each of the
// KeepDaily most recent days that have one. Pure.
func pruneAuto(cps []*format.CheckpointDoc, pol format.CheckpointPolicy) []string {
	var auto []*format.CheckpointDoc
	for _, c := range cps {
		if strings.HasPrefix(c.Label, AutoPrefix) {
			auto = append(auto, c)
		}
	}
	sort.Slice(auto, func(i, j int) bool { return auto[i].Time.After(auto[j].Time) })
	keep := map[string]bool{}
	bucketKeep := func(n int, bucket func(time.Time) time.Time) {
		seen := map[time.Time]bool{}
		for _, c := range auto {
			b := bucket(c.Time)
			if seen[b] {
				continue
			}
			if len(seen) == n {
				return
			}
			seen[b] = true
			keep[c.Label] = true
		}
	}
	bucketKeep(pol.KeepHourly, func(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) })
	bucketKeep(pol.KeepDaily, func(t time.Time) time.Time {
		y, m, d := t.UTC().Date()
		return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	})
	var del []string
	for _, c := range auto {
		if !keep[c.Label] {
			del = append(del, c.Label)
		}
	}
	return del
}

// autoCheckpointLoop takes automatic checkpoints while the volume is
// written, as its policy says, and prunes old ones.
func (v *Volume) autoCheckpointLoop(poll time.Duration) {
	var last time.Time
	v.tick(poll, func() {
		if err := v.autoCheckpointOnce(v.ctx, &last); err != nil && v.ctx.Err() == nil {
			v.log.Warn("automatic checkpoint failed", "err", err)
		}
	})
}

func (v *Volume) autoCheckpointOnce(ctx context.Context, last *time.Time) error {
	pol, err := v.pool.policyDoc(ctx, v.desc.ID)
	if err != nil || pol.EverySeconds <= 0 {
		return err
	}
	now := v.opts.Clock.Now()
	v.mu.Lock()
	written := v.lastWrite.After(*last)
	v.mu.Unlock()
	if !written || now.Sub(*last) < time.Duration(pol.EverySeconds)*time.Second {
		return nil
	}
	if _, err := v.Checkpoint(ctx, autoLabel(now)); err != nil && !errors.Is(err, ErrCheckpointExists) {
		return err
	}
	*last = now
	docs, err := v.pool.listCheckpoints(ctx, v.desc.ID)
	if err != nil {
		return err
	}
	for _, l := range pruneAuto(docs, pol) {
		if err := v.pool.store.Delete(ctx, format.CheckpointPrefix(v.desc.ID)+l); err != nil {
			return fmt.Errorf("prune checkpoint %s: %w", l, err)
		}
	}
	return nil
}
