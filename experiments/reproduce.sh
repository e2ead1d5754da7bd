#!/usr/bin/env bash
# Re-run the experiments behind the records, then regenerate each record from its runs:
#   bash experiments/reproduce.sh                     # every experiment below, in this order
#   bash experiments/reproduce.sh audio_only digit    # some of them
# Every sweep has a fixed directory under logs/train/multiruns/<name>, so running this again resumes:
# finished runs are skipped and a run cut short resumes from its checkpoints/last.ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(audio_input_study audio_epochs_study audio_ensemble_study audio_only image_only_mnist_refit default match_accurate match_labels_only fusion_study
     fusion_study_match_labels_only image_only image_only_mnist digit fusion_search match_from_experts_study
     match_from_experts
     search_lr_width)

train() {  # train NAME [overrides...]: seeds 0, 1 and 2 of one recipe
  local name=$1
  shift
  python -m mmdigits.train -m "$@" seed=0,1,2 "hydra.sweep.dir=\${paths.log_dir}/train/multiruns/$name" \
    'hydra.sweep.subdir=seed${seed}'
}

for name in "${@:-${ALL[@]}}"; do
  metric=test/acc
  runs=("logs/train/multiruns/$name")
  case $name in
    audio_only)  # the corpus split, then speaker-grouped 4-fold CV next to MiniRocket (single runs, ensembles of 3)
      train audio_only experiment=audio_only
      python -m mmdigits.bench.peers --folds 4 --seeds 0 --members 3 --out logs/bench/audio_only_folds \
        > experiments/audio_only/peers_folds.md
      runs+=(logs/bench/audio_only_folds) ;;
    default)  # the corpus split, then speaker-grouped 4-fold cross-validation (seed 0 per fold)
      train default
      python -m mmdigits.train -m experiment=default data=speaker_folds data.fold=0,1,2,3 seed=0 \
        'hydra.sweep.dir=${paths.log_dir}/train/multiruns/default_folds' 'hydra.sweep.subdir=fold${data.fold}'
      runs+=(logs/train/multiruns/default_folds) ;;
    match_from_experts)  # per seed, beside its experts composed and the default run; then with match_accurate
      python -m mmdigits.bench.peers --experiment match_from_experts --seeds 0 1 2 \
        --out logs/bench/match_from_experts > experiments/match_from_experts/peers.md
      runs=(logs/bench/match_from_experts logs/train/multiruns/match_accurate) ;;
    fusion_study | fusion_study_match_labels_only) python -m mmdigits.train experiment="$name" ;;
    audio_input_study)  # never tested; then a later candidate, variance normalisation, by the same rule
      python -m mmdigits.train experiment="$name" && python -m mmdigits.train experiment=audio_cmvn_study
      runs+=(logs/train/multiruns/audio_cmvn_study) && metric=val/acc ;;
    audio_epochs_study) python -m mmdigits.train experiment="$name" && metric=val/acc ;;  # never tested
    audio_ensemble_study)  # never tested: 12 runs, then each fold's three scored together on its validation part
      python -m mmdigits.train experiment="$name"
      sweep=logs/train/multiruns/$name
      for fold in 0 1 2 3; do
        members=$(ls "$sweep"/*_fold$fold/checkpoints/last_epoch.ckpt | paste -sd, -)
        [[ -f $sweep/ensemble3_fold$fold/metrics.json ]] || python -m mmdigits.evaluate split=val \
          data=speaker_folds data.fold=$fold data.val_fraction=0.25 seed=0 "ckpt_path=[$members]" \
          "hydra.run.dir=$sweep/ensemble3_fold$fold"
      done
      metric=val/acc ;;
    match_from_experts_study) python -m mmdigits.train experiment="$name" && metric=val/acc_best ;;  # never tested
    fusion_search) python -m mmdigits.train experiment="$name" && metric=val/acc_best ;;  # never tested
    search_lr_width)  # an Optuna search with pruning, the same without; the best trial tested once, after
      sweep=logs/train/multiruns/lr_width
      python -m mmdigits.train -m hparams_search=lr_width
      python -m mmdigits.train -m hparams_search=lr_width hydra/sweeper/pruner=none \
        hydra.sweeper.study_name=lr_width_no_pruning
      [[ -f $sweep/best_trial_test/metrics.json ]] || python -m mmdigits.evaluate \
        ckpt_path="$(python -m mmdigits.analysis.search $sweep)" "hydra.run.dir=$sweep/best_trial_test"
      python -m mmdigits.report --search "$sweep" logs/train/multiruns/lr_width_no_pruning \
        --record "experiments/$name"
      continue ;;
    *) train "$name" experiment="$name" ;;
  esac
  python -m mmdigits.report "${runs[@]}" --metric "$metric" --record "experiments/$name"
done
python -m mmdigits.report --index experiments
