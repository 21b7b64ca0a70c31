"""Shared machinery of the dataset converters, in three modules re-exported here: :mod:`.discovery` (finding the
cases), :mod:`.image_io` (reading, checking and writing images) and :mod:`.pipeline` (the target, the parallel
run, the summary and the command line).

Every converter follows the same steps: find the cases in the source folder (nothing is read in
depth yet, so a missing modality is reported before any writing), check the target dataset id and
the requested split, convert every case in parallel into a temporary folder next to the target,
write dataset.json with nnU-Net's ``generate_dataset_json`` and move the folder into place only
when every case succeeded (:func:`nnunet_mcc.fileio.atomic_folder`).

Every image read is checked (ITK's own complaints on stderr are errors, and the stored data must
agree with the header: :mod:`.integrity`), every file written is checked after writing, and bad
input raises :class:`nnunet_mcc.errors.UserError` with one line naming the file and the problem.
The source is only ever read.
"""

from nnunet_mcc.dataset_conversion.discovery import *  # noqa: F401,F403
from nnunet_mcc.dataset_conversion.image_io import *  # noqa: F401,F403
from nnunet_mcc.dataset_conversion.pipeline import *  # noqa: F401,F403
from nnunet_mcc.errors import UserError  # noqa: F401  (the converters import it from here)
