"""The ablation's trainers: one class per variant, each changing ONE setting of a loss family's trainer, with a
learning-rate override and the gradient probe (``benchmarks/ablation.py`` runs them)."""

import os
from typing import Dict, List, Optional


def trainer_classes(variants: Dict[str, tuple]) -> Dict[str, type]:
    """The ablation's trainers for a study's ``variants`` (name -> (class name, description)), by variant name
    (built after nnU-Net's paths are set)."""
    import torch
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_mcc.fileio import write_json
    from nnunet_mcc.losses import MCCLoss
    from nnunet_mcc.trainers.baselines import nnUNetTrainerBaseline, nnUNetTrainerBaselineCE, nnUNetTrainerBaselineDice
    from nnunet_mcc.trainers.gwdl import nnUNetTrainerGWDL, nnUNetTrainerGWDL_CE
    from nnunet_mcc.trainers.segan import nnUNetTrainerSegAN, nnUNetTrainerSegANDiceCE
    from nnunet_mcc.trainers.mcc import nnUNetTrainerMCC, nnUNetTrainerMCC_CE

    class Probed:
        """Learning-rate override and the gradient probe (a mixin before the trainer class)."""

        lr: Optional[float] = None
        probe_iterations = 0

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            if self.lr is not None:
                self.initial_lr = self.lr
            self.probe_iterations = int(os.environ.get("MCC_ABLATION_PROBE_ITERATIONS", "0"))
            self.probe_records: List[dict] = []
            self._iteration_in_epoch = 0

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            self._iteration_in_epoch = 0

        def train_step(self, batch: dict) -> dict:
            if self._iteration_in_epoch < self.probe_iterations:
                self.probe_records.append(self.probe(batch))
            self._iteration_in_epoch += 1
            return super().train_step(batch)

        def on_train_end(self):
            write_json(os.path.join(self.output_folder, "gradient_probe.json"),
                       {"variant": type(self).__name__, "records": self.probe_records}, "gradient probe")
            super().on_train_end()

        def seed_mcc(self) -> torch.nn.Module:
            """The seed's soft MCC on probabilities, with this run's settings (for dL/dp)."""
            return MCCLoss(None, batch=self.configuration_manager.batch_dice, check_target=False)

        def probe_terms(self) -> Dict[str, torch.nn.Module]:
            loss = self.loss.loss if isinstance(self.loss, DeepSupervisionWrapper) else self.loss
            terms = {"loss": loss}
            for name in ("dc", "ce"):
                if hasattr(loss, name):
                    terms[name] = getattr(loss, name)
            return terms

        def probe(self, batch: dict) -> dict:
            data = batch["data"].to(self.device, non_blocking=True)
            target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            target = target.to(self.device)
            with torch.no_grad():
                output = self.network(data)
            logits = (output[0] if isinstance(output, (list, tuple)) else output).detach().float()
            labels = target[:, 0].long()
            probabilities = torch.softmax(logits, 1)
            record = {"epoch": self.current_epoch, "classes": {}}
            gradients_z = {}
            for name, term in self.probe_terms().items():
                z = logits.clone().requires_grad_(True)
                value = term(z, target)
                (gradients_z[name],) = torch.autograd.grad(value, z)
                record[f"value_{name}"] = float(value.detach())
            p = probabilities.clone().requires_grad_(True)
            (gradient_p,) = torch.autograd.grad(self.seed_mcc()(p, target), p)
            predicted = logits.argmax(1)
            for c in range(1, logits.shape[1]):
                own = labels == c
                rest = ~own
                entry = {"voxels": int(own.sum()), "predicted_voxels": int((predicted == c).sum()),
                         "mean_p_own": float(probabilities[:, c][own].mean()) if own.any() else None,
                         "max_p_own": float(probabilities[:, c][own].max()) if own.any() else None,
                         "dL_dp_own": float(gradient_p[:, c][own].norm()),
                         "dL_dp_rest": float(gradient_p[:, c][rest].norm())}
                for name, g in gradients_z.items():
                    entry[f"dz_{name}_own"] = float(g[:, c][own].norm())
                    entry[f"dz_{name}_rest"] = float(g[:, c][rest].norm())
                    entry[f"dz_{name}_own_sum"] = float(g[:, c][own].sum())
                record["classes"][str(c)] = entry
            return record

    class MCCVariant(Probed, nnUNetTrainerMCC):
        batch: Optional[bool] = None  # None: nnU-Net's batch_dice from the plans
        include_background = False
        eps = 1e-20
        missed_weight = 0.0

        def _mcc_kwargs(self) -> dict:
            kwargs = super()._mcc_kwargs()
            if self.batch is not None:
                kwargs["batch"] = self.batch
            return kwargs

        def loss_kwargs(self) -> dict:
            return {**self._mcc_kwargs(), "include_background": self.include_background, "eps": self.eps,
                    "missed_weight": self.missed_weight}

        def _build_loss(self):
            return self._wrap_deep_supervision(MCCLoss("softmax", **self.loss_kwargs()))

        def seed_mcc(self):
            return MCCLoss(None, **{**self.loss_kwargs(), "missed_weight": 0.0})

    class AblationMCC(MCCVariant):
        pass

    class AblationMCC_lr1e3(MCCVariant):
        lr = 1e-3

    class AblationMCC_perSample(MCCVariant):
        batch = False

    class AblationMCC_withBG(MCCVariant):
        include_background = True

    class AblationMCC_eps1e6(MCCVariant):
        eps = 1e-6

    class AblationMCC_missed(MCCVariant):
        missed_weight = 1.0

    class AblationDCCE(Probed, nnUNetTrainerBaseline):
        pass

    class AblationMCCCE(Probed, nnUNetTrainerMCC_CE):
        pass

    class AblationCE(Probed, nnUNetTrainerBaselineCE):
        pass

    class AblationDice(Probed, nnUNetTrainerBaselineDice):
        pass

    class GWDLVariant(Probed, nnUNetTrainerGWDL):
        gwdl_missed_weight = 0.0  # the paper's loss unless a variant says otherwise

    class AblationGWDL(GWDLVariant):
        pass

    class AblationGWDL_lr1e3(GWDLVariant):
        lr = 1e-3

    class AblationGWDL_missedPerSample(GWDLVariant):
        gwdl_missed_weight = 1.0

        def _gwdl_kwargs(self) -> dict:
            return {**super()._gwdl_kwargs(), "batch": False}

    class AblationGWDL_perSample(GWDLVariant):
        def _gwdl_kwargs(self) -> dict:
            return {**super()._gwdl_kwargs(), "batch": False}

    class AblationGWDLCE(Probed, nnUNetTrainerGWDL_CE):
        gwdl_missed_weight = 0.0

    # one setting changed around GWDL alone and around GWDL + CE: AblationGWDL_zeroOne, ..., AblationGWDLCE_missed
    settings = {"zeroOne": {"gwdl_matrix": "zero_one"}, "brats": {"gwdl_matrix": "brats"},
                "GDL": {"gwdl_weighting": "GDL"}, "missed": {"gwdl_missed_weight": 1.0}}
    one_setting = [type(f"{base.__name__}_{suffix}", (base,), dict(attributes))
                   for base in (AblationGWDL, AblationGWDLCE) for suffix, attributes in settings.items()]

    class SegANVariant(Probed, nnUNetTrainerSegAN):
        segan_lambda, critic_lr, critic_warmup_fraction, segan_lambda_ramp_fraction = 1.0, 1e-4, 0.0, 0.0

    class AblationSegAN(SegANVariant):
        pass

    class AblationSegAN_lambda0(SegANVariant):
        segan_lambda = 0.0

    class AblationSegAN_lambda01(SegANVariant):
        segan_lambda = 0.1

    class AblationSegAN_warmup(SegANVariant):
        critic_warmup_fraction, segan_lambda_ramp_fraction = 0.1, 0.2

    class AblationSegAN_criticLr1e3(SegANVariant):
        critic_lr = 1e-3

    class AblationSegAN_DiceCE(Probed, nnUNetTrainerSegANDiceCE):
        segan_lambda, critic_lr, critic_warmup_fraction, segan_lambda_ramp_fraction = 1.0, 1e-4, 0.0, 0.0

    class AblationSegAN_DiceCE_criticLr1e3(AblationSegAN_DiceCE):
        critic_lr = 1e-3

    classes = {c.__name__: c for c in (
        AblationMCC, AblationMCC_lr1e3, AblationMCC_perSample, AblationMCC_withBG, AblationMCC_eps1e6,
        AblationMCC_missed, AblationDCCE, AblationMCCCE, AblationCE, AblationDice, AblationGWDL, AblationGWDL_lr1e3,
        AblationGWDL_missedPerSample, AblationGWDL_perSample, AblationGWDLCE, *one_setting, AblationSegAN,
        AblationSegAN_lambda0, AblationSegAN_lambda01, AblationSegAN_warmup, AblationSegAN_criticLr1e3,
        AblationSegAN_DiceCE, AblationSegAN_DiceCE_criticLr1e3)}
    return {variant: classes[class_name] for variant, (class_name, _) in variants.items()}
