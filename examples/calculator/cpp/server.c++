// A C++ EZ-RPC server of the calculator (../calculator/calculator.capnp, the
// official schema), built by build.sh next to the client. It is the C++
// peer the Go client is tested against:
//
//	./calculator-server 127.0.0.1:0          a TCP port chosen by the system
//	./calculator-server unix:/tmp/calc.sock
//	./calculator-server --watch-stdin ADDR   also exit when stdin is closed
//
// The address is what EzRpcServer (kj::Network) takes. Once it listens it
// prints one line on stdout, "listening on ADDR port N" (N is 0 on a unix
// socket), and then serves until it is killed (or, with --watch-stdin,
// until stdin reaches end of file: a test that dies cannot leave it
// behind).
//
// Tail calls. Cap'n Proto 0.9.2 has CallContext<Params, Results>::tailCall
// (capnp/capability.h):
//
//	template <typename SubParams>
//	kj::Promise<void> tailCall(Request<SubParams, Results>&& tailRequest);
//
// It forwards the call to another capability and answers with that call's
// results, which must therefore be of the same Results type. evaluate's
// results (value :Value) are not Function.call's (value :Float64), so an
// evaluate cannot be forwarded to a Function; a Function can. So a
// function made by defFunction whose body is itself a call, such as
// t(x, y) = pow(x, y), evaluates the parameters of that call and then
// tail-calls its function with them instead of calling it and copying the
// answer. When that function lives in the process that called t (a
// client's callback), the RPC system sends the forwarded Call back to the
// client with sendResultsTo.yourself and answers the client's call with
// Return.takeFromOtherQuestion: the client gets its answer from its own
// object and the results never cross the connection. That is what the Go
// client's tail-call check (RunTailCallCheck in ../calculator/checks.go)
// meets. A tail call to a function of this server (an operator, another
// defined function) stays in this process.

#include "calculator.capnp.h"

#include <capnp/ez-rpc.h>
#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <iostream>

namespace {

typedef Calculator::Function::CallParams CallParams;
typedef Calculator::Function::CallResults CallResults;

kj::Promise<double> eval(Calculator::Expression::Reader expr, kj::ArrayPtr<const double> params);

// callFunction calls fn on the values args will have.
kj::Promise<double> callFunction(Calculator::Function::Client fn, kj::Promise<kj::Array<double>> args) {
  return args.then([fn](kj::Array<double> values) mutable {
    auto req = fn.callRequest();
    req.setParams(values);
    return req.send().then([](capnp::Response<CallResults> r) { return r.getValue(); });
  });
}

// evalAll starts the evaluation of every expression of list.
kj::Promise<kj::Array<double>> evalAll(capnp::List<Calculator::Expression>::Reader list,
                                       kj::ArrayPtr<const double> params) {
  auto parts = kj::heapArrayBuilder<kj::Promise<double>>(list.size());
  for (auto e : list) {
    parts.add(eval(e, params));
  }
  return kj::joinPromises(parts.finish());
}

// eval computes expr, where parameter i stands for params[i]. Everything it
// reads of expr and params it reads before returning; what it waits for
// (previous results, function calls) it holds by reference.
kj::Promise<double> eval(Calculator::Expression::Reader expr, kj::ArrayPtr<const double> params) {
  switch (expr.which()) {
    case Calculator::Expression::LITERAL:
      return expr.getLiteral();

    case Calculator::Expression::PREVIOUS_RESULT:
      return expr.getPreviousResult().readRequest().send().then(
          [](capnp::Response<Calculator::Value::ReadResults> r) { return r.getValue(); });

    case Calculator::Expression::PARAMETER: {
      uint32_t i = expr.getParameter();
      KJ_REQUIRE(i < params.size(), "parameter out of range", i, params.size());
      return params[i];
    }

    case Calculator::Expression::CALL: {
      auto call = expr.getCall();
      return callFunction(call.getFunction(), evalAll(call.getParams(), params));
    }
  }
  KJ_FAIL_REQUIRE("unknown expression type", static_cast<uint16_t>(expr.which()));
}

// copyParams checks the number of parameters and copies them out of the
// call's message.
kj::Array<double> copyParams(capnp::List<double>::Reader params, uint expected) {
  KJ_REQUIRE(params.size() == expected, "wrong number of parameters", params.size(), expected);
  auto out = kj::heapArray<double>(params.size());
  for (uint i = 0; i < params.size(); i++) {
    out[i] = params[i];
  }
  return out;
}

class Number final : public Calculator::Value::Server {
 public:
  explicit Number(double v) : v(v) {}

  kj::Promise<void> read(ReadContext context) override {
    context.getResults().setValue(v);
    return kj::READY_NOW;
  }

 private:
  double v;
};

class Arithmetic final : public Calculator::Function::Server {
 public:
  explicit Arithmetic(Calculator::Operator op) : op(op) {}

  kj::Promise<void> call(CallContext context) override {
    auto p = copyParams(context.getParams().getParams(), 2);
    double v = 0;
    switch (op) {
      case Calculator::Operator::ADD: v = p[0] + p[1]; break;
      case Calculator::Operator::SUBTRACT: v = p[0] - p[1]; break;
      case Calculator::Operator::MULTIPLY: v = p[0] * p[1]; break;
      case Calculator::Operator::DIVIDE: v = p[0] / p[1]; break;
    }
    context.getResults().setValue(v);
    return kj::READY_NOW;
  }

 private:
  Calculator::Operator op;
};

// Defined is a function made by defFunction: its body, copied into a
// message of its own with the capabilities it names.
class Defined final : public Calculator::Function::Server {
 public:
  Defined(uint paramCount, Calculator::Expression::Reader body) : paramCount(paramCount) {
    this->body.setRoot(body);
  }

  kj::Promise<void> call(CallContext context) override {
    auto args = copyParams(context.getParams().getParams(), paramCount);
    context.releaseParams();
    auto body = this->body.getRoot<Calculator::Expression>().asReader();
    if (body.isCall()) {
      // The body is a call: forward it (see the tail calls above).
      auto call = body.getCall();
      auto fn = call.getFunction();
      return evalAll(call.getParams(), args).then(
          [context, fn](kj::Array<double> values) mutable {
            auto req = fn.callRequest();
            req.setParams(values);
            return context.tailCall(kj::mv(req));
          });
    }
    return eval(body, args).then([context](double v) mutable { context.getResults().setValue(v); });
  }

 private:
  uint paramCount;
  capnp::MallocMessageBuilder body;
};

class CalculatorServer final : public Calculator::Server {
 public:
  kj::Promise<void> evaluate(EvaluateContext context) override {
    return eval(context.getParams().getExpression(), nullptr).then([context](double v) mutable {
      context.getResults().setValue(kj::heap<Number>(v));
    });
  }

  kj::Promise<void> defFunction(DefFunctionContext context) override {
    auto p = context.getParams();
    KJ_REQUIRE(p.getParamCount() >= 0, "paramCount is negative", p.getParamCount());
    context.getResults().setFunc(kj::heap<Defined>(p.getParamCount(), p.getBody()));
    return kj::READY_NOW;
  }

  kj::Promise<void> getOperator(GetOperatorContext context) override {
    auto op = context.getParams().getOp();
    switch (op) {
      case Calculator::Operator::ADD:
      case Calculator::Operator::SUBTRACT:
      case Calculator::Operator::MULTIPLY:
      case Calculator::Operator::DIVIDE:
        break;
      default:
        KJ_FAIL_REQUIRE("unknown operator", static_cast<uint16_t>(op));
    }
    context.getResults().setFunc(kj::heap<Arithmetic>(op));
    return kj::READY_NOW;
  }
};

// drain reads in until end of file (or an error).
kj::Promise<void> drain(kj::AsyncInputStream& in, kj::ArrayPtr<kj::byte> buf) {
  return in.tryRead(buf.begin(), 1, buf.size()).then([&in, buf](size_t n) -> kj::Promise<void> {
    if (n == 0) {
      return kj::READY_NOW;
    }
    return drain(in, buf);
  });
}

// stdinClosed resolves when stdin reaches end of file (or fails).
kj::Promise<void> stdinClosed(kj::LowLevelAsyncIoProvider& io) {
  auto in = io.wrapInputFd(0);
  auto buf = kj::heapArray<kj::byte>(256);
  auto done = drain(*in, buf);
  return done.attach(kj::mv(in), kj::mv(buf));
}

}  // namespace

int main(int argc, const char* argv[]) {
  bool watchStdin = false;
  const char* addr = nullptr;
  for (int i = 1; i < argc; i++) {
    if (kj::StringPtr(argv[i]) == "--watch-stdin") {
      watchStdin = true;
    } else if (addr == nullptr && argv[i][0] != '-') {
      addr = argv[i];
    } else {
      addr = nullptr;
      break;
    }
  }
  if (addr == nullptr) {
    std::cerr << "usage: " << argv[0] << " [--watch-stdin] ADDRESS\n"
                 "Serves the calculator with Cap'n Proto EZ-RPC on ADDRESS (HOST:PORT,\n"
                 "HOST:0 for a port chosen by the system, or unix:PATH) and prints\n"
                 "\"listening on ADDRESS port N\" once it listens. --watch-stdin: exit\n"
                 "when stdin is closed." << std::endl;
    return 2;
  }
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    capnp::EzRpcServer server(kj::heap<CalculatorServer>(), addr);
    auto& ws = server.getWaitScope();
    uint port = server.getPort().wait(ws);
    std::cout << "listening on " << addr << " port " << port << std::endl;
    if (watchStdin) {
      stdinClosed(server.getLowLevelIoProvider()).wait(ws);
    } else {
      kj::NEVER_DONE.wait(ws);
    }
  })) {
    std::cerr << "calculator server: " << e->getDescription().cStr() << std::endl;
    return 1;
  }
  return 0;
}
