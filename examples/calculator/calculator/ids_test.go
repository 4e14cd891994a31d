package calculator

import (
	"strings"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/schemas"
	"capnproto.org/go/capnp/v3/server"
	"capnproto.org/go/capnp/v3/std/capnp/schema"
)

// The ids of the official calculator schema (capnproto's
// c++/samples/calculator.capnp, file id 0x85150b117366d14b), as `capnp
// compile -o-` of that file gives them. They were not copied from our
// generated code: a peer built from the official schema sends these in
// every Call and answers Unimplemented to any other.
const (
	officialCalculator          = 0x97983392df35cc36
	officialExpression          = 0xd438d7caf5548d15
	officialValue               = 0xc3e69d34d3ee48d2
	officialFunction            = 0xede83a3d96840394
	officialOperator            = 0x8793407861e6dfe6
	officialEvaluateParams      = 0xbb0eaae1557a36d4
	officialEvaluateResults     = 0x81b1a3f55887a611
	officialDefFunctionParams   = 0xf287bcba4556dc89
	officialDefFunctionResults  = 0x8d24f465047cd6c8
	officialGetOperatorParams   = 0x8a8dceb4f4a3c530
	officialGetOperatorResults  = 0xd18fbb7763c08c20
	officialValueReadParams     = 0xd3532574d58db558
	officialValueReadResults    = 0xe6be6723122ae822
	officialFunctionCallParams  = 0xb19160df70b87717
	officialFunctionCallResults = 0xc0e0abf76914dead
	officialExpressionCall      = 0xd99522a3d3878d66 // the group
)

// officialNodes is every declaration of the official schema by its name
// (as capnp's displayName gives it, after "calculator.capnp:").
var officialNodes = map[string]uint64{
	"Calculator":                       officialCalculator,
	"Calculator.Expression":            officialExpression,
	"Calculator.Expression.call":       officialExpressionCall,
	"Calculator.Value":                 officialValue,
	"Calculator.Function":              officialFunction,
	"Calculator.Operator":              officialOperator,
	"Calculator.evaluate$Params":       officialEvaluateParams,
	"Calculator.evaluate$Results":      officialEvaluateResults,
	"Calculator.defFunction$Params":    officialDefFunctionParams,
	"Calculator.defFunction$Results":   officialDefFunctionResults,
	"Calculator.getOperator$Params":    officialGetOperatorParams,
	"Calculator.getOperator$Results":   officialGetOperatorResults,
	"Calculator.Value.read$Params":     officialValueReadParams,
	"Calculator.Value.read$Results":    officialValueReadResults,
	"Calculator.Function.call$Params":  officialFunctionCallParams,
	"Calculator.Function.call$Results": officialFunctionCallResults,
}

// TestOfficialIDs: every type id of the generated code equals the official
// schema's, so that the official C++ samples and our Go code understand
// each other's calls. On the schema with ids of its own (file id
// 0xa0c51e9ab8d0cf61) every line of it failed.
func TestOfficialIDs(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"Calculator", Calculator_TypeID, officialCalculator},
		{"Calculator.Expression", Calculator_Expression_TypeID, officialExpression},
		{"Calculator.Value", Calculator_Value_TypeID, officialValue},
		{"Calculator.Function", Calculator_Function_TypeID, officialFunction},
		{"Calculator.Operator", Calculator_Operator_TypeID, officialOperator},
		{"Calculator.evaluate$Params", Calculator_evaluate_Params_TypeID, officialEvaluateParams},
		{"Calculator.evaluate$Results", Calculator_evaluate_Results_TypeID, officialEvaluateResults},
		{"Calculator.defFunction$Params", Calculator_defFunction_Params_TypeID, officialDefFunctionParams},
		{"Calculator.defFunction$Results", Calculator_defFunction_Results_TypeID, officialDefFunctionResults},
		{"Calculator.getOperator$Params", Calculator_getOperator_Params_TypeID, officialGetOperatorParams},
		{"Calculator.getOperator$Results", Calculator_getOperator_Results_TypeID, officialGetOperatorResults},
		{"Calculator.Value.read$Params", Calculator_Value_read_Params_TypeID, officialValueReadParams},
		{"Calculator.Value.read$Results", Calculator_Value_read_Results_TypeID, officialValueReadResults},
		{"Calculator.Function.call$Params", Calculator_Function_call_Params_TypeID, officialFunctionCallParams},
		{"Calculator.Function.call$Results", Calculator_Function_call_Results_TypeID, officialFunctionCallResults},
	} {
		if c.got != c.want {
			t.Errorf("%s: id %#x, want the official %#x", c.name, c.got, c.want)
		}
	}
}

// TestOfficialSchemaNodes: the schema compiled into the generated code
// (RegisterSchema) declares exactly the
// official nodes, each with its official id, the group included: nothing
// missing, nothing added, nothing renamed.
func TestOfficialSchemaNodes(t *testing.T) {
	var reg schemas.Registry
	RegisterSchema(&reg)
	data, err := reg.Find(officialCalculator)
	if err != nil {
		t.Fatalf("the generated schema has no Calculator (%#x): %v", uint64(officialCalculator), err)
	}
	msg, err := capnp.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	req, err := schema.ReadRootCodeGeneratorRequest(msg)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := req.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "calculator.capnp:"
	seen := map[string]bool{}
	for i := 0; i < nodes.Len(); i++ {
		n := nodes.At(i)
		display, err := n.DisplayName()
		if err != nil {
			t.Fatal(err)
		}
		if n.Which() == schema.Node_Which_file {
			continue // ours has the official id, checked below
		}
		name, ok := strings.CutPrefix(display, prefix)
		if !ok {
			continue // go.capnp's annotations, imported
		}
		want, ok := officialNodes[name]
		switch {
		case !ok:
			t.Errorf("%s (%#x) is not in the official schema", name, n.Id())
		case n.Id() != want:
			t.Errorf("%s: id %#x, want the official %#x", name, n.Id(), want)
		}
		seen[name] = true
	}
	for name := range officialNodes {
		if !seen[name] {
			t.Errorf("%s is missing from the generated schema", name)
		}
	}
	// The file id is the first word of every id's derivation.
	var file uint64
	for i := 0; i < nodes.Len(); i++ {
		if n := nodes.At(i); n.Id() == officialCalculator {
			file = n.ScopeId()
		}
	}
	if file != 0x85150b117366d14b {
		t.Errorf("Calculator's scope (the file id) is %#x, want the official 0x85150b117366d14b", file)
	}
}

// TestOfficialMethods: the method tables the generated code dispatches on
// (what a Call names: interface id and method ordinal) are the official
// schema's, method for method.
func TestOfficialMethods(t *testing.T) {
	type method struct {
		iface   uint64
		ordinal uint16
		name    string
	}
	tables := []struct {
		name    string
		methods []server.Method
		want    []method
	}{
		{"Calculator", Calculator_Methods(nil, Server{}), []method{
			{officialCalculator, 0, "evaluate"},
			{officialCalculator, 1, "defFunction"},
			{officialCalculator, 2, "getOperator"},
		}},
		{"Calculator.Value", Calculator_Value_Methods(nil, value(0)), []method{
			{officialValue, 0, "read"},
		}},
		{"Calculator.Function", Calculator_Function_Methods(nil, operator(Calculator_Operator_add)), []method{
			{officialFunction, 0, "call"},
		}},
	}
	for _, tab := range tables {
		if len(tab.methods) != len(tab.want) {
			t.Errorf("%s: %d methods, want %d", tab.name, len(tab.methods), len(tab.want))
			continue
		}
		for i, m := range tab.methods {
			w := tab.want[i]
			if m.InterfaceID != w.iface || m.MethodID != w.ordinal || m.MethodName != w.name {
				t.Errorf("%s method %d: %#x.@%d %s, want %#x.@%d %s", tab.name, i,
					m.InterfaceID, m.MethodID, m.MethodName, w.iface, w.ordinal, w.name)
			}
		}
	}
}
