package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/drctl/drctl/catalog"
	"github.com/drctl/drctl/engine/wal"
)

// newSignCommand signs what a repository holds unsigned: the way to turn
// on allowed signers in a repository written before signing was set up.
func newSignCommand(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "sign ID|--all",
		Short: "Sign existing unsigned backups (and, with --all, archived WAL) with the signing key",
		Long: "Sign the manifests of existing backups that have no signature, and with --all every archived\n" +
			"WAL file without one, as they are stored. Run `drctl verify --all` first: signing vouches for\n" +
			"what is there. Then readers can be given an allowed-signers file.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) {
				return &exitCodeError{2, fmt.Errorf("sign takes one backup id, or --all")}
			}
			s, st, err := g.open(cmd, stderr)
			if err != nil {
				return err
			}
			signer, err := s.signer()
			if err != nil {
				return err
			}
			if signer == nil {
				return &exitCodeError{2, fmt.Errorf("no signing key: give --signing-key or DRCTL_SIGNING_KEY_FILE")}
			}
			var ids []string
			if all {
				list, err := catalog.List(cmd.Context(), st, nil)
				if err != nil {
					return err
				}
				for _, m := range list {
					ids = append(ids, m.ID)
				}
			} else {
				m, err := catalog.Resolve(cmd.Context(), st, args[0], catalog.Query{})
				if err != nil {
					return err
				}
				ids = append(ids, m.ID)
			}
			backups, files := 0, 0
			for _, id := range ids {
				signed, err := catalog.SignExisting(cmd.Context(), st, id, signer)
				if err != nil {
					return fmt.Errorf("sign backup %s: %w", id, err)
				}
				if signed {
					backups++
				}
			}
			if all {
				// Each WAL file is read and checked against its name first.
				keys, err := s.decryptKeys()
				if err != nil {
					return err
				}
				a := &wal.Archive{Store: st, Signer: signer, Keys: keys}
				entries, err := a.List(cmd.Context())
				if err != nil {
					return err
				}
				for _, e := range entries {
					signed, err := a.SignExisting(cmd.Context(), e)
					if err != nil {
						return fmt.Errorf("sign %s: %w", e.Key, err)
					}
					if signed {
						files++
					}
				}
			}
			fmt.Fprintf(stdout, "signed %d backups and %d WAL files\n", backups, files)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every backup and every archived WAL file")
	return cmd
}
