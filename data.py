"""The original's dataset factories (``get_training_set``, ``get_eval_set``, ``get_test_set``).

Each returns a :class:`dataset.DatasetFromFolder` whose items are ``frames.Sample``s
``(input, target, neighbor, flow, bicubic)``: float32 tensors in [0, 1] of shape (3, h, w),
(3, H, W), lists of ``nFrames - 1`` (3, h, w) and (2, h, w) tensors, and (3, H, W).
"""

from __future__ import annotations

from dataset import DatasetFromFolder, DatasetFromFolderTest


def get_training_set(data_dir: str, nFrames: int, upscale_factor: int, data_augmentation: bool,
                     file_list: str, other_dataset: bool, patch_size: int, future_frame: bool,
                     flow_cache: str | None = None, skip_bad: bool = False) -> DatasetFromFolder:
    """Random LR patches (``patch_size``, 0 = whole frames), augmented when asked."""
    return DatasetFromFolder(data_dir, nFrames, upscale_factor,
                             data_augmentation=data_augmentation, file_list=file_list,
                             other_dataset=other_dataset, patch_size=patch_size,
                             future_frame=future_frame, flow_cache=flow_cache, skip_bad=skip_bad)


def get_eval_set(data_dir: str, nFrames: int, upscale_factor: int, data_augmentation: bool,
                 file_list: str, other_dataset: bool, patch_size: int, future_frame: bool,
                 flow_cache: str | None = None, skip_bad: bool = False) -> DatasetFromFolder:
    """Like the training set, but repeatable: the patch is the centre one and there is no
    augmentation (``data_augmentation`` is accepted for the original's signature and ignored),
    so every evaluation scores the same samples."""
    del data_augmentation
    return DatasetFromFolder(data_dir, nFrames, upscale_factor, data_augmentation=False,
                             file_list=file_list, other_dataset=other_dataset,
                             patch_size=patch_size, future_frame=future_frame,
                             flow_cache=flow_cache, skip_bad=skip_bad, patch_position="centre")


def get_test_set(data_dir: str, nFrames: int, upscale_factor: int, file_list: str,
                 other_dataset: bool, future_frame: bool, upscale_only: bool = False,
                 flow_cache: str | None = None) -> DatasetFromFolderTest:
    """Whole frames in list order; ``upscale_only`` takes the frames as the LR input."""
    return DatasetFromFolderTest(data_dir, nFrames, upscale_factor, file_list=file_list,
                                 other_dataset=other_dataset, future_frame=future_frame,
                                 upscale_only=upscale_only, flow_cache=flow_cache)
