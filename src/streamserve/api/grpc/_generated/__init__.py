"""Generated code of grpc_predict_v2.proto (python -m streamserve.api.grpc.codegen); do not edit."""
