"""Constants defined in exactly one place."""

#: Sample rate (Hz) of every waveform inside serkit; audio is resampled to it on read.
SAMPLE_RATE = 16_000

#: Columns every manifest carries.
MANIFEST_REQUIRED = ("id", "path", "duration", "emotion", "speaker", "gender")
#: Optional manifest columns with a fixed meaning.
MANIFEST_OPTIONAL = ("session", "valence", "arousal", "dominance", "transcript", "split", "corpus")
#: Dimensional attributes, in the order serkit reports them.
DIMENSIONS = ("arousal", "valence", "dominance")

#: Environment variable that points serkit at a data root (corpora live in $SERKIT_DATA/corpora/<name>).
DATA_ENV = "SERKIT_DATA"
