package registry

import "go.uber.org/zap"

// ReachableChanged tells table that a backend's store answers again (ok)
// or no longer does (err says why), as Table.SetReachable, and logs the
// change the same way for every store: store names it ("etcd"), fields
// (its addresses) go into every message, and back is the message when it
// answers again. A loss is logged as an error that says what routing does
// meanwhile: it keeps the last snapshot once the registry has synced from
// the store (synced), and registry-routed requests get 503 until the
// first sync before that. A backend calls it once per change, keeping
// track of the store's state itself.
func ReachableChanged(table *Table, log *zap.Logger, store string, ok, synced bool, err error, back string, fields ...zap.Field) {
	table.SetReachable(ok)
	if log == nil {
		log = zap.NewNop()
	}
	fields = append([]zap.Field{zap.String("backend", store)}, fields...)
	switch {
	case ok:
		log.Info(back, fields...)
	case synced:
		log.Error(store+" unreachable; routing keeps the last snapshot and retries", append(fields, zap.Error(err))...)
	default:
		log.Error(store+" unreachable; registry-routed requests get 503 until the first sync, retrying", append(fields, zap.Error(err))...)
	}
}
