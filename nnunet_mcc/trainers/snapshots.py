"""Snapshots: the fold's validation cases predicted and evaluated during training, after chosen epochs
(``NNUNET_MCC_SNAPSHOT_EPOCHS``), into ``snapshots/epoch_<N>/summary.json`` for a "score after N iterations"
table. A mixin of ``ComparisonTrainer``."""

import os
import tempfile
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_mcc import provenance
from nnunet_mcc.fileio import write_json
from nnunet_mcc.trainers.progress import jsonable


class Snapshots:
    """Validation of the current network in the training process. Needs nnU-Net's trainer attributes."""

    def validate_snapshot(self, epoch: int) -> Optional[str]:
        """Predict and evaluate the fold's validation cases with the current network, in this process.

        The steps are nnU-Net's own (its predictor's sliding window, ``export_prediction_from_logits``,
        ``compute_metrics`` per case), run one case after another instead of through nnU-Net's worker
        pools, so a snapshot costs the predictions and not the start of two process pools. Writes
        ``snapshots/epoch_<N>/summary.json`` with nnU-Net's per-case entries (rank 0; other ranks wait).
        """
        path = provenance.snapshot_summary(self.output_folder, epoch)
        if self.local_rank == 0:
            network = self.network.module if self.is_ddp else self.network
            was_training = network.training
            self.set_deep_supervision_enabled(False)
            network.eval()
            try:
                cases = self._evaluate_validation_cases(network)
            finally:
                self.set_deep_supervision_enabled(True)
                network.train(was_training)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json(path, {"format": provenance.FORMAT, "epoch": int(epoch),
                              "iterations": int(epoch * self.num_iterations_per_epoch),
                              "metric_per_case": cases}, "snapshot summary")
            self.print_to_log_file(f"Snapshot after epoch {epoch}: {len(cases)} validation cases evaluated, {path}")
        if self.is_ddp:
            dist.barrier()
        return path

    def _evaluate_validation_cases(self, network: torch.nn.Module) -> List[dict]:
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics
        from nnunetv2.inference.export_prediction import export_prediction_from_logits
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

        lm = self.label_manager
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        ending = self.dataset_json["file_ending"]
        reference_folder = join(self.preprocessed_dataset_folder_base, "gt_segmentations")
        reader_writer = self.plans_manager.image_reader_writer_class()
        labels_or_regions = lm.foreground_regions if lm.has_regions else lm.foreground_labels
        cases = []
        with tempfile.TemporaryDirectory(prefix="nnunet_mcc_snapshot_") as tmp, torch.no_grad():
            for key in dataset.identifiers:
                data, _, seg_prev, properties = dataset.load_case(key)
                data = data[:]
                if self.is_cascaded:
                    data = np.vstack((data, convert_labelmap_to_one_hot(seg_prev[:], lm.foreground_labels,
                                                                        output_dtype=data.dtype)))
                logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.ascontiguousarray(data)))
                export_prediction_from_logits(logits.cpu(), properties, self.configuration_manager,
                                              self.plans_manager, self.dataset_json, join(tmp, key), False)
                result = compute_metrics(join(reference_folder, key + ending), join(tmp, key + ending), reader_writer,
                                         labels_or_regions, lm.ignore_label)
                cases.append({"reference_file": result["reference_file"],
                              "prediction_file": os.path.basename(result["prediction_file"]),
                              "metrics": {str(k): {m: jsonable(v) for m, v in values.items()}
                                          for k, values in result["metrics"].items()}})
        return cases
