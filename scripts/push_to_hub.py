"""Push a trained KGDiff pipeline, or a prepared dataset, to the Hugging Face Hub with a rendered card.

    # a pipeline folder (scripts/train.py --output_dir, with metrics.json from its validation or evaluate.py)
    python scripts/push_to_hub.py --model runs/pems_bay --repo_id USER/kgdiff-pems-bay --dry_run
    python scripts/push_to_hub.py --model runs/pems_bay --repo_id USER/kgdiff-pems-bay --private

    # a prepared dataset folder (scripts/prepare_data.py --output)
    python scripts/push_to_hub.py --dataset prepared/pems_bay_16 --repo_id USER/pems-bay-16-kgdiff

--dry_run prints exactly the files that would be uploaded and the card, and uploads nothing (no login
needed). Otherwise log in first (`hf auth login`; `huggingface-cli login` in older huggingface_hub), set
HF_TOKEN, or pass --token.
"""

from __future__ import annotations

import argparse
import logging

from kgdiff_diffusers.hub import FLAVOURS, HubUpload, NotLoggedInError, push_pipeline, push_prepared_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="pipeline folder written by save_pretrained / scripts/train.py")
    source.add_argument("--dataset", help="prepared dataset folder written by scripts/prepare_data.py")
    parser.add_argument("--repo_id", required=True, help="USER/NAME of the Hub repository")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--dry_run", action="store_true", help="print the file list and the card; upload nothing"
    )
    parser.add_argument(
        "--flavour", choices=FLAVOURS, help="card flavour (default: detected from the dataset name)"
    )
    parser.add_argument("--token", help="Hub token (default: the saved login or HF_TOKEN)")
    parser.add_argument(
        "--license", help="Hub licence id (default: apache-2.0 for models, the data's for datasets)"
    )
    parser.add_argument(
        "--dataset_dir", help="--model only: the prepared dataset it was trained on (for the card)"
    )
    parser.add_argument(
        "--dataset_repo_id", help="--model only: Hub id of its dataset, for the card's metadata"
    )
    args = parser.parse_args(argv)
    if args.dataset and (args.dataset_dir or args.dataset_repo_id):
        parser.error("--dataset_dir and --dataset_repo_id go with --model")
    return args


def main(argv: list[str] | None = None) -> HubUpload:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {"private": args.private, "dry_run": args.dry_run, "token": args.token, "flavour": args.flavour}
    if args.license:
        common["license"] = args.license
    if args.model:
        upload = push_pipeline(
            args.model,
            args.repo_id,
            dataset_dir=args.dataset_dir,
            dataset_repo_id=args.dataset_repo_id,
            **common,
        )
    else:
        upload = push_prepared_dataset(args.dataset, args.repo_id, **common)
    if args.dry_run:
        print(
            f"Dry run: would upload {len(upload.files)} files to the {upload.repo_type} repository "
            f"{upload.repo_id}:"
        )
        print("\n".join(f"  {path}" for path in upload.files))
        print("\n--- README.md ---")
        print(str(upload.card))
    else:
        print(upload.commit_url)
    return upload


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError, NotLoggedInError) as err:
        raise SystemExit(f"push_to_hub.py: error: {err}") from None
