package doccheck

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// root is the module's root, from this package's directory.
const root = "../.."

// TestSnippetsCompile checks that every ```go block of the documents is
// code from a Go file of the module, which go vet and go test compile.
func TestSnippetsCompile(t *testing.T) {
	var docs []string
	var sources strings.Builder
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "bench-report") {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case strings.HasSuffix(path, ".go"):
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sources.WriteString(normalize(string(b)))
			sources.WriteString("\n")
		case strings.HasSuffix(path, ".md"):
			docs = append(docs, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no Markdown documents found: is root right?")
	}
	src := sources.String()
	blocks := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range goBlock.FindAllStringSubmatchIndex(string(b), -1) {
			blocks++
			code := string(b)[m[2]:m[3]]
			line := 1 + strings.Count(string(b)[:m[0]], "\n")
			if !strings.Contains(src, normalize(code)) {
				t.Errorf("%s:%d: this go block is not in any Go file of the module; copy it from (or into) a compiled Example:\n%s", doc, line, code)
			}
		}
	}
	if blocks == 0 {
		t.Error("no go blocks found in the documents: the pattern is wrong")
	}
}

var goBlock = regexp.MustCompile("(?ms)^```go\n(.*?)^```")

// normalize turns every run of white space into one space.
func normalize(s string) string { return strings.Join(strings.Fields(s), " ") }
