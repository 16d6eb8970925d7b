"""What the service and the training job must agree on: tables, store, features, registry."""
