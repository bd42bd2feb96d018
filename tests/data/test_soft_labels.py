"""SoftLabelTrainSet: real utterances with one-hot soft labels, then variants (all, or m per parent per epoch)."""

import numpy as np

from serkit.data.soft_labels import SoftLabelTrainSet


def test_soft_label_train_set_per_epoch():
    class Items:
        def __init__(self, n, emo):
            self.n, self.emo, self.enc, self.rows, self.ids = n, emo, {}, None, [str(i) for i in range(n)]

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"index": i, "emotion": self.emo[i], "tag": i}

    base = Items(3, [0, 1, 2])
    var = Items(4, [0, 0, 1, 1])
    soft = np.array([[0.7, 0.3, 0], [0.9, 0, 0.1], [0, 0.8, 0.2], [0.4, 0.6, 0]], dtype=np.float32)
    ds = SoftLabelTrainSet(base, var, soft, 3, parents=["a", "a", "b", "b"], per_epoch=1)
    assert len(ds) == 5
    assert ds[0]["emotion_soft"].tolist() == [1, 0, 0]
    seen = set()
    for e in range(8):
        ds.set_epoch(e)
        tags = [ds[i]["tag"] for i in (3, 4)]
        assert tags[0] in (0, 1) and tags[1] in (2, 3)
        seen.update(tags)
        assert np.allclose(ds[3]["emotion_soft"], soft[tags[0]])
    assert seen == {0, 1, 2, 3}
    assert len(SoftLabelTrainSet(base, var, soft, 3)) == 7
