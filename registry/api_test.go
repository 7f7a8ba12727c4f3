package registry

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// maxExported bounds the package's API: its exported top-level names
// (functions, types, variables, constants) and the exported methods of
// its exported types, counted from the source (fields and interface
// methods are not counted). The API is what a Go service or a backend
// needs; the limit only goes down. Run with -v to list the names.
const maxExported = 114

func TestExportedNames(t *testing.T) {
	names := exportedNames(t, ".")
	t.Logf("%d exported names: %s", len(names), strings.Join(names, " "))
	if len(names) > maxExported {
		t.Errorf("registry exports %d names and methods, more than %d: unexport what only the package uses, or fold it into what users need", len(names), maxExported)
	}
}

// exportedNames returns the exported top-level names of the package in
// dir, and the exported methods of its exported types as Type.Method,
// sorted.
func exportedNames(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var names []string
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			names = append(names, declNames(d)...)
		}
	}
	slices.Sort(names)
	return names
}

// declNames returns what d declares that is exported.
func declNames(d ast.Decl) []string {
	var names []string
	switch d := d.(type) {
	case *ast.FuncDecl:
		if !d.Name.IsExported() {
			break
		}
		if d.Recv == nil {
			return []string{d.Name.Name}
		}
		recv := d.Recv.List[0].Type
		if star, ok := recv.(*ast.StarExpr); ok {
			recv = star.X
		}
		if id, ok := recv.(*ast.Ident); ok && id.IsExported() {
			return []string{id.Name + "." + d.Name.Name}
		}
	case *ast.GenDecl:
		for _, s := range d.Specs {
			switch s := s.(type) {
			case *ast.TypeSpec:
				if s.Name.IsExported() {
					names = append(names, s.Name.Name)
				}
			case *ast.ValueSpec:
				for _, n := range s.Names {
					if n.IsExported() {
						names = append(names, n.Name)
					}
				}
			}
		}
	}
	return names
}
