// Package policy will hold per-business-process RPO/RTO policies (point-of-sale
// sync, inventory, finance posting, ...) evaluated against the evidence in a
// repository's catalog, for the release gate. It reads catalogs only.
//
// Not implemented yet: this package is reserved so the layout is stable.
package policy
