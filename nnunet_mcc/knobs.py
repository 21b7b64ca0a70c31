"""Names of the environment variables this package's trainers read (import-light: no torch, no nnU-Net).

``nnunet_mcc.trainers.base`` applies them; ``nnunet-mcc crossval`` sets them for the runs it starts.
"""

# the training budget, part of a result's identity: trainer attribute -> environment variable
BUDGET_VARIABLES = {
    "num_epochs": "NNUNET_MCC_EPOCHS",
    "num_iterations_per_epoch": "NNUNET_MCC_ITERATIONS",
    "num_val_iterations_per_epoch": "NNUNET_MCC_VAL_ITERATIONS",
}
# when checkpoints and progress.png are written: they change no result
SCHEDULE_VARIABLES = {
    "save_every": "NNUNET_MCC_SAVE_EVERY",
    "plot_every": "NNUNET_MCC_PLOT_EVERY",
}
SNAPSHOT_VARIABLE = "NNUNET_MCC_SNAPSHOT_EPOCHS"
# seeds Python's, NumPy's and torch's generators when a trainer is created; a run is reproducible when nnU-Net
# also augments in its own process (nnUNet_n_proc_DA=0: its worker processes draw their own random seeds)
SEED_VARIABLE = "NNUNET_MCC_SEED"
