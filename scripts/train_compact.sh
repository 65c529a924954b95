#!/usr/bin/env bash
# How weights/iSeeBetter_4x_compact.pth was made: data preparation, four CPU training stages
# and the Vid4 evaluation, exactly as run (2 vCPUs, no GPU; 3.3 h of training in all).
#
#   bash scripts/train_compact.sh [WORK_DIR]        (default WORK_DIR: ./compact_run)
#
# Needs: `make setup` (or the requirements), Debian's opencv-doc package for its sample media
# (/usr/share/doc/opencv-doc/examples/data), and ../shared/data (Vimeo-90K sample, Vid4).
# Vid4 is the test set and is never trained on; bigbuckbunny.mp4 is left out for the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-compact_run}
source scripts/compact_data.sh
MODEL=(--base_filter 32 --feat 16 --n_resblock 1 --residual --loss l1 --no-gan
       --batchSize 4 --patch_size 64 --threads 1 --channels_last --amp none
       --val_data_dir "$VIMEO/sequences" --val_file_list "$VIMEO/sep_testlist.txt")

make_set1 "$WORK"
make_set2 "$WORK"
make_set3 "$WORK"

# Stage 1: from scratch, 24 epochs (1128 iterations, 56 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set1/sequences" \
    --file_list "$WORK/set1/sep_trainlist.txt" --lr 1e-3 --nEpochs 24 --lr_step 16 \
    --flow_cache "$WORK/flows1" --save_folder "$WORK/stage1"
# Stage 2: the larger set, 7 epochs (910 iterations, 45 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set2/sequences" \
    --file_list "$WORK/set2/sep_trainlist.txt" --lr 5e-4 --nEpochs 7 --lr_step 5 \
    --pretrained --pretrained_sr "$WORK/stage1/netG_epoch_4_24.pth" \
    --flow_cache "$WORK/flows2" --save_folder "$WORK/stage2"
# Stage 3: the same set, another order and crops, 5 epochs (650 iterations, 32 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set2/sequences" \
    --file_list "$WORK/set2/sep_trainlist.txt" --lr 2e-4 --nEpochs 5 --lr_step 3 --seed 7 \
    --pretrained --pretrained_sr "$WORK/stage2/netG_epoch_4_7.pth" \
    --flow_cache "$WORK/flows2" --save_folder "$WORK/stage3"

# Stage 4: the largest set, 8 epochs (1344 iterations, 68 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set3/sequences" \
    --file_list "$WORK/set3/sep_trainlist.txt" --lr 2e-4 --nEpochs 8 --lr_step 6 --seed 8 \
    --pretrained --pretrained_sr "$WORK/stage3/netG_epoch_4_5.pth" \
    --flow_cache "$WORK/flows2" --save_folder "$WORK/stage4"

# Vid4 x4, all four clips (the README's results table).
cat ../shared/data/Vid4/{calendar,city,foliage,walk}.txt > "$WORK/vid4.txt"
$PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
    -m "$WORK/stage4/netG_epoch_4_8.pth" -r -o "$WORK/vid4" --compare --precision fp32
# The same with self-ensemble (the "+" columns; about 11 s per frame).
$PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
    -m "$WORK/stage4/netG_epoch_4_8.pth" -r -o "$WORK/vid4_ensemble" --self_ensemble --precision fp32
