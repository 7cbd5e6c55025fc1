"""Training, from the silver layer to a registered model: the training set (training_set), the fitted feature
stages (features), the algorithms and their search spaces (algorithms; war is our own weighted-average
regressor), cross-validated base models (models), the stacked PipelineModel (stacking), metrics and plots, the
MLflow registry (registry) and the promotion gate (release)."""
