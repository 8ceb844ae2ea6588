// Package drill will run automated restore drills into scratch sandboxes (a
// throw-away local cluster or a scratch Kubernetes namespace), check data
// assertions, and record the measured restore time. It builds on restore.
//
// Not implemented yet: this package is reserved so the layout is stable.
package drill
