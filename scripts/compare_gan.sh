#!/usr/bin/env bash
# README's "L1 or GAN?" comparison, exactly as run: from the shipped compact model, (a) more L1
# training and (b) fine-tuning with the paper's four-fold loss (MSE + 0.006 VGG + 0.001
# adversarial + 2e-8 TV, the SRGAN discriminator trained alongside), on the same data with the
# same iterations, learning rate and seed; then both, and bicubic, on Vid4 with the temporal
# metrics, and the crop image docs/vid4_gan_crop.png.
#
#   bash scripts/compare_gan.sh [WORK_DIR]        (default WORK_DIR: ./gan_run)
#
# VGG: ImageNet VGG16 weights cannot be downloaded on the machine this ran on, so (b) uses a
# VGG16 randomly initialised from the run's seed (--random_vgg). With torchvision's
# vgg16-397923af.pth at hand, replace --random_vgg by --vgg_weights PATH for the paper's loss.
# Needs what scripts/compact_data.sh needs; the length via EPOCHS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-gan_run}
EPOCHS=${EPOCHS:-2}
source scripts/compact_data.sh
if [ ! -f "$WORK/set3/.complete" ]; then  # a marker: the list exists before it is complete
    make_set2 "$WORK"
    make_set3 "$WORK"
    touch "$WORK/set3/.complete"
fi
COMMON=(--base_filter 32 --feat 16 --n_resblock 1 --residual
        --pretrained --pretrained_sr weights/iSeeBetter_4x_compact.pth
        --data_dir "$WORK/set3/sequences" --file_list "$WORK/set3/sep_trainlist.txt"
        --batchSize 4 --patch_size 64 --threads 1 --channels_last --amp auto
        --lr 1e-4 --lr_step 0 --nEpochs "$EPOCHS" --snapshots 1 --save_every_iters 25
        --seed 18 --flow_cache "$WORK/flows"
        --val_data_dir "$VIMEO/sequences" --val_file_list "$VIMEO/sep_testlist.txt")
# A killed run continues where its last state left it.
resume_flag() { [ -f "$1/train_state.pth" ] && echo --resume || true; }

# (a) L1 only, no discriminator.
$PY iSeeBetterTrain.py "${COMMON[@]}" --loss l1 --no-gan --save_folder "$WORK/l1" \
    $(resume_flag "$WORK/l1")
# (b) The four-fold loss with the discriminator.
$PY iSeeBetterTrain.py "${COMMON[@]}" --loss fourfold --gan --random_vgg \
    --save_folder "$WORK/gan" $(resume_flag "$WORK/gan")

# Vid4 x4, all 171 frames: PSNR/SSIM, tOF and warping error for each model and bicubic.
cat ../shared/data/Vid4/{calendar,city,foliage,walk}.txt > "$WORK/vid4.txt"
for run in l1 gan; do
    $PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
        -m "$WORK/$run/netG_epoch_4_$EPOCHS.pth" -r -o "$WORK/vid4_$run"
done
$PY scripts/crop_compare.py --frame calendar/010.png --box 135 215 150 100 \
    --results "$WORK/vid4_l1" "$WORK/vid4_gan" --labels "L1 (a)" "GAN (b)" \
    --data_dir ../shared/data/Vid4 -o docs/vid4_gan_crop.png
