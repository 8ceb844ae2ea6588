package main

import "syscall"

// childProcAttr: a job's process dies with the daemon (SIGTERM: it cleans
// up as at a shutdown), never left running unsupervised.
func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} }
