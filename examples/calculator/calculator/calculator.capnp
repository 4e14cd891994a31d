# The classic Cap'n Proto calculator, declared exactly as the C++ sample
# (capnproto/c++/samples/calculator.capnp) declares it: the same file id,
# the same declarations in the same nesting, with the same names. Cap'n
# Proto derives the id of every nested declaration (Calculator, its structs,
# enums, interfaces and the params and results of each method) from the
# file id and the names, so this file has the official ids without writing
# them out, and the official C++ calculator-client and calculator-server
# talk to ours (interface ids travel in every Call). Renaming, re-nesting
# or reordering anything here breaks that: calculator_test.go's
# TestOfficialIDs holds the official ids. The comments are ours; the Go
# annotations need go.capnp on the include path (see gen.go and
# ../cpp/build.sh) and do not change any id.
@0x85150b117366d14b;

using Go = import "/go.capnp";
$Go.package("calculator");
$Go.import("github.com/capnshm/capnshm/examples/calculator/calculator");

interface Calculator {
  # A "simple" mathematical calculator, callable via RPC.
  #
  # Expressions are evaluated server-side into Value capabilities: a client
  # can pipeline further calls on a value it has not received yet, which is
  # what makes this the demo of promise pipelining.

  evaluate @0 (expression :Expression) -> (value :Value);
  # Evaluate the given expression and return the result. The result is
  # returned wrapped in a Value interface so that it may be passed back to
  # the server in a pipelined request; call value.read() to get the number.

  struct Expression {
    # A numeric expression.

    union {
      literal @0 :Float64;
      # A literal numeric value.

      previousResult @1 :Value;
      # A value that was (or, via pipelining, will be) returned by a
      # previous evaluate().

      parameter @2 :UInt32;
      # A parameter to the function (only valid in function bodies; see
      # defFunction).

      call :group {
        # Call a function on a list of parameters.
        function @3 :Function;
        params @4 :List(Expression);
      }
    }
  }

  interface Value {
    # Wraps a numeric value in an RPC object.

    read @0 () -> (value :Float64);
    # Read back the raw numeric value.
  }

  defFunction @1 (paramCount :Int32, body :Expression)
              -> (func :Function);
  # Define a function that takes paramCount parameters and returns the
  # evaluation of body after substituting these parameters.

  interface Function {
    # An algebraic function. Can be called directly, or can be used inside
    # an Expression.

    call @0 (params :List(Float64)) -> (value :Float64);
    # Call the function on the given parameters.
  }

  getOperator @2 (op :Operator) -> (func :Function);
  # Get a Function representing an arithmetic operator, which can then be
  # used in Expressions.

  enum Operator {
    add @0;
    subtract @1;
    multiply @2;
    divide @3;
  }
}
