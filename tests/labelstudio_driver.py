"""Drives a real Label Studio through its own SDK (``label-studio-sdk``) for the tests. It runs in
Label Studio's venv (``make label-studio``: its SDK pins packages the project's venv must not
take), reading one JSON command per line on stdin and answering one JSON line on stdout.

Brush masks are decoded here by Label Studio's own decoder (``label_studio_sdk.converter.brush``)
and sent back as packed bits, so the tests never read Label Studio's RLE with seglabel's code."""

from __future__ import annotations

import base64
import json
import sys
import time

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle


class Driver:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.sdk = LabelStudio(base_url=url, api_key=token, timeout=600)
        self._access = ""

    def _headers(self) -> dict:
        if not self._access:
            got = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": self.token}, timeout=30)
            got.raise_for_status()
            self._access = got.json()["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def _request(self, method: str, path: str, make_kw=dict, check: bool = True, **kw) -> requests.Response:
        """A call to Label Studio's API with a short-lived access token, made again with a new one
        when it has expired (minutes: a long benchmark outlives it). ``make_kw()``: more arguments,
        made afresh for each try (open files). ``seconds`` on the response: the try that answered."""
        for _ in range(2):
            t0 = time.perf_counter()
            r = requests.request(method, f"{self.url}{path}", headers=self._headers(), **make_kw(), **kw)
            r.seconds = time.perf_counter() - t0
            if r.status_code != 401:
                break
            self._access = ""
        if check:
            r.raise_for_status()
        return r

    def project(self, title: str, config: str) -> dict:
        return {"id": self.sdk.projects.create(title=title, label_config=config).id}

    def upload(self, project: int, files: list[str]) -> dict:
        # one form field per file: a repeated name keeps one file
        def parts():
            return {"files": {f"file{i}": (p.rsplit("/", 1)[-1], open(p, "rb")) for i, p in enumerate(files)}}

        self._request("POST", f"/api/projects/{project}/import", make_kw=parts, timeout=120)
        return self.tasks(project)

    def add_tasks(self, project: int, tasks: list[dict]) -> dict:
        self.sdk.projects.import_tasks(id=project, request=tasks)
        return self.tasks(project)

    def tasks(self, project: int) -> dict:
        return {"tasks": [{"id": t.id, "data": t.data} for t in self.sdk.tasks.list(project=project)]}

    def connect(
        self, project: int, url: str, interactive: bool = True, extra_params=None, timeout=None
    ) -> dict:
        kw = {"extra_params": extra_params} if extra_params else {}
        if timeout:
            kw["timeout"] = timeout
        ml = self.sdk.ml.create(project=project, url=url, is_interactive=interactive, title="seglabel", **kw)
        return {"id": ml.id, "model_version": ml.model_version, "state": str(ml.state)}

    def retrieve(self, project: int) -> dict:
        t0 = time.perf_counter()
        self.sdk.actions.create(id="retrieve_tasks_predictions", project=project,
                                selected_items={"all": True, "excluded": []})  # fmt: skip
        return {"seconds": time.perf_counter() - t0}

    def predictions(self, project: int) -> dict:
        out = []
        for p in self.sdk.predictions.list(project=project):
            out.append({"id": p.id, "task": p.task, "score": p.score, "model_version": p.model_version,
                        "result": p.result})  # fmt: skip
        return {"predictions": out}

    def count(self, project: int) -> dict:
        """The project's numbers of tasks and predictions, without downloading the predictions."""
        got = self._request("GET", f"/api/projects/{project}/", timeout=60).json()
        return {"tasks": got.get("task_number"), "predictions": got.get("total_predictions_number")}

    def decode(self, rle: list[int], height: int, width: int) -> dict:
        alpha = np.reshape(decode_rle(rle), [height, width, 4])[:, :, 3] > 0
        return {"bits": base64.b64encode(np.packbits(alpha.ravel())).decode()}

    def annotate(self, task: int, result: list[dict], prediction: int | None = None) -> dict:
        kw = {"parent_prediction": prediction} if prediction else {}
        return {"id": self.sdk.annotations.create(id=task, result=result, **kw).id}

    def update_annotation(self, annotation: int, result: list[dict]) -> dict:
        return {"id": self.sdk.annotations.update(id=annotation, result=result).id}

    def import_file(self, project: int, path: str) -> dict:
        """Tasks (with predictions) as ``seglabel label --format label-studio`` wrote them, imported."""
        with open(path, encoding="utf-8") as f:
            self.sdk.projects.import_tasks(id=project, request=json.load(f))
        return self.tasks(project)

    def read_cvat(self, folder: str) -> dict:
        """A CVAT for images 1.1 XML read by datumaro (the dataset framework CVAT imports with)."""
        import datumaro as dm

        ds = dm.Dataset.import_from(folder, "cvat")
        labels = ds.categories()[dm.AnnotationType.label]
        items = []
        for item in ds:
            anns = []
            for a in item.annotations:
                name = labels[a.label].name
                if a.type == dm.AnnotationType.mask:
                    m = np.asarray(a.image).astype(bool)
                    anns.append({"label": name, "shape": list(m.shape),
                                 "bits": base64.b64encode(np.packbits(m.ravel())).decode()})  # fmt: skip
                elif a.type == dm.AnnotationType.polygon:
                    anns.append({"label": name, "points": [float(v) for v in a.points]})
            items.append({"name": item.id, "anns": anns, "size": list(item.media.size or ())})
        return {"items": items, "labels": [c.name for c in labels]}

    def delete_annotation(self, annotation: int) -> dict:
        self.sdk.annotations.delete(id=annotation)
        return {}

    def interactive(self, ml: int, task: int, context: dict) -> dict:
        r = self._request("POST", f"/api/ml/{ml}/interactive-annotating", check=False,
                          json={"task": task, "context": context}, timeout=120)  # fmt: skip
        return {"status": r.status_code, "body": r.json(), "seconds": r.seconds}


def main() -> None:
    driver = Driver(sys.argv[1], sys.argv[2])
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out = {"ok": getattr(driver, cmd.pop("op"))(**cmd)}
        except Exception as exc:  # the test reads the failure
            out = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
