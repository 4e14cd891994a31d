package main

// prepareDisplay: every Windows session has a desktop (under Wine, the
// prefix's null graphics driver stands in for one).
func prepareDisplay() (stop func()) { return func() {} }

// modes of the loop to run the flood test in.
var modes = []struct {
	name        string
	interactive bool
}{{"scheduled", false}, {"interactive", true}}
