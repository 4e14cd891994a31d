# The classic Cap'n Proto calculator, with the structure of the C++ sample
# (capnproto/c++/samples/calculator.capnp), so that a C++ client built from
# this file talks to the Go server. Its ids are its own; the Go annotations
# need go.capnp on the include path (see gen.go and ../cpp/build.sh).
@0xa0c51e9ab8d0cf61;

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
