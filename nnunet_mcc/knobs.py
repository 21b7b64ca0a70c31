"""Names of the environment variables this package's trainers read (import-light: no torch, no nnU-Net).

``nnunet_mcc.trainers.base`` applies them; ``nnunet-mcc crossval`` sets them for the runs it starts.
"""

# trainer attribute -> environment variable
BUDGET_VARIABLES = {
    "num_epochs": "NNUNET_MCC_EPOCHS",
    "num_iterations_per_epoch": "NNUNET_MCC_ITERATIONS",
    "num_val_iterations_per_epoch": "NNUNET_MCC_VAL_ITERATIONS",
    "save_every": "NNUNET_MCC_SAVE_EVERY",
    "plot_every": "NNUNET_MCC_PLOT_EVERY",
}
SNAPSHOT_VARIABLE = "NNUNET_MCC_SNAPSHOT_EPOCHS"
