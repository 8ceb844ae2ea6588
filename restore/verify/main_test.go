package verify_test

import (
	"testing"

	"github.com/drctl/drctl/testrig"
)

func TestMain(m *testing.M) { testrig.MainNoLeaks(m) }
