//go:build !race

package calculator_test

const raceEnabled = false
