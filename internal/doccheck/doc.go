// Package doccheck holds the test that keeps the Go snippets of the
// repository's Markdown documents (README.md, docs/, examples/*/README.md)
// in step with code that compiles: every ```go block must appear, up to
// whitespace, in a Go file of the module (an Example, most often, whose
// snippet region is marked "// README: ..." and "// README: end").
package doccheck
