//! Data loading on the CPU: IDX, CIFAR-10 and image folders written to temporary directories,
//! the bundled Fashion-MNIST and "Moby-Dick", tokenizers, and the seeded loaders.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::Rng;
use fiak::data::{
    Augment, BatchSource, ImageDataset, ImageLoader, LoaderState, Split, TextLoader, TokenizerKind, cifar, idx,
    image_eval_batches, load_image_dataset, load_text, text_eval_batches,
};

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("fiak-data-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Encodes an IDX file of unsigned bytes.
fn idx_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend((d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn error_text<T: std::fmt::Debug>(result: fiak::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------------------------------------
// IDX

#[test]
fn idx_raw_round_trip() {
    let dir = TempDir::new("idx-raw");
    let mut rng = Rng::new(1);
    let data = random_bytes(&mut rng, 3 * 4 * 5);
    let path = dir.path().join("x-images-idx3-ubyte");
    std::fs::write(&path, idx_bytes(&[3, 4, 5], &data)).unwrap();

    let array = idx::read_idx(&path).unwrap();
    assert_eq!(array.dims, vec![3, 4, 5]);
    assert_eq!(array.data, data);
}

#[test]
fn idx_gzip_round_trip() {
    let dir = TempDir::new("idx-gz");
    let mut rng = Rng::new(2);
    let data = random_bytes(&mut rng, 7 * 2);
    let path = dir.path().join("x-labels-idx1-ubyte.gz");
    std::fs::write(&path, gzip(&idx_bytes(&[14], &data))).unwrap();

    let array = idx::read_idx(&path).unwrap();
    assert_eq!(array.dims, vec![14]);
    assert_eq!(array.data, data);
}

#[test]
fn idx_truncated_rejected() {
    let dir = TempDir::new("idx-truncated");
    let full = idx_bytes(&[2, 3, 3], &[7; 18]);

    let raw = dir.path().join("short-images-idx3-ubyte");
    std::fs::write(&raw, &full[..full.len() - 5]).unwrap();
    let message = error_text(idx::read_idx(&raw));
    assert!(message.contains("short-images-idx3-ubyte"), "{message}");
    assert!(message.contains("truncated"), "{message}");
    assert!(message.contains("need 18 bytes"), "{message}");

    let header_only = dir.path().join("header-images-idx3-ubyte");
    std::fs::write(&header_only, &full[..9]).unwrap();
    let message = error_text(idx::read_idx(&header_only));
    assert!(message.contains("header-images-idx3-ubyte"), "{message}");
    assert!(message.contains("truncated IDX header"), "{message}");

    let compressed = gzip(&full);
    let gz = dir.path().join("short-images-idx3-ubyte.gz");
    std::fs::write(&gz, &compressed[..compressed.len() / 2]).unwrap();
    let message = error_text(idx::read_idx(&gz));
    assert!(message.contains("short-images-idx3-ubyte.gz"), "{message}");
    assert!(message.contains("gzip"), "{message}");
}

#[test]
fn idx_corrupt_rejected() {
    let dir = TempDir::new("idx-corrupt");

    let mut bad_magic = idx_bytes(&[4], &[1, 2, 3, 4]);
    bad_magic[0] = 0x12;
    let path = dir.path().join("magic-labels-idx1-ubyte");
    std::fs::write(&path, &bad_magic).unwrap();
    let message = error_text(idx::read_idx(&path));
    assert!(message.contains("magic-labels-idx1-ubyte"), "{message}");
    assert!(message.contains("magic number 0x12"), "{message}");

    let mut float_type = idx_bytes(&[1], &[0, 0, 0, 0]);
    float_type[2] = 0x0D;
    let path = dir.path().join("float-labels-idx1-ubyte");
    std::fs::write(&path, &float_type).unwrap();
    let message = error_text(idx::read_idx(&path));
    assert!(message.contains("float-labels-idx1-ubyte"), "{message}");
    assert!(message.contains("element type 0x0d"), "{message}");

    let path = dir.path().join("long-labels-idx1-ubyte");
    std::fs::write(&path, idx_bytes(&[2], &[1, 2, 3])).unwrap();
    let message = error_text(idx::read_idx(&path));
    assert!(message.contains("long-labels-idx1-ubyte"), "{message}");
    assert!(message.contains("1 extra"), "{message}");
}

/// Writes an MNIST-style directory with `train` and `t10k` files of random 5x4 images.
fn write_idx_dir(dir: &Path, train: usize, test: usize, gzipped: bool) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(3);
    let mut first = (Vec::new(), Vec::new());
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let pixels = random_bytes(&mut rng, n * 5 * 4);
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        let (images, label_file) = (idx_bytes(&[n, 5, 4], &pixels), idx_bytes(&[n], &labels));
        let suffix = if gzipped { ".gz" } else { "" };
        let encode = |b: Vec<u8>| if gzipped { gzip(&b) } else { b };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")), encode(images)).unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")),
            encode(label_file),
        )
        .unwrap();
        if prefix == "train" {
            first = (pixels, labels);
        }
    }
    first
}

#[test]
fn idx_directory_loads() {
    for gzipped in [false, true] {
        let dir = TempDir::new("idx-dir");
        let (pixels, labels) = write_idx_dir(dir.path(), 6, 2, gzipped);

        let train = load_image_dataset(Some(dir.path()), Split::Train, 0, 0, 0).unwrap();
        assert_eq!((train.len, train.channels, train.height, train.width), (6, 1, 5, 4));
        assert_eq!(train.classes, 3);
        assert_eq!(train.class_names, vec!["0", "1", "2"]);
        assert_eq!(train.labels, labels.iter().map(|&l| l as u32).collect::<Vec<_>>());
        let expected: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        assert_eq!(train.images, expected);

        let test = load_image_dataset(Some(dir.path()), Split::Test, 0, 0, 0).unwrap();
        assert_eq!(test.len, 2);
        assert_eq!(test.classes, 3);
    }
}

#[test]
fn idx_label_count_mismatch_rejected() {
    let dir = TempDir::new("idx-mismatch");
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte"),
        idx_bytes(&[3, 2, 2], &[0; 12]),
    )
    .unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_bytes(&[2], &[0, 1])).unwrap();

    let message = error_text(load_image_dataset(Some(dir.path()), Split::Train, 0, 0, 0));
    assert!(message.contains("train-labels-idx1-ubyte"), "{message}");
    assert!(message.contains("2 labels"), "{message}");
    assert!(message.contains("3 images"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Bundled Fashion-MNIST subset: 5,000 training and 1,000 test images of 28x28 in 10 classes.

#[test]
fn bundled_fashion_mnist_counts() {
    let train = load_image_dataset(None, Split::Train, 1, 28, 28).unwrap();
    assert_eq!(train.len, 5000);
    assert_eq!(train.images.len(), 5000 * 28 * 28);
    assert_eq!(train.labels.len(), 5000);
    assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
    assert_eq!(train.classes, 10);
    assert_eq!(train.class_names[0], "T-shirt/top");
    assert_eq!(train.class_names[9], "Ankle boot");
    assert!(
        train.class_counts().iter().all(|&c| c > 300),
        "{:?}",
        train.class_counts()
    );
    assert!(train.images.iter().all(|&x| (0.0..=1.0).contains(&x)));
    assert!(train.images.contains(&1.0));

    let test = load_image_dataset(None, Split::Test, 0, 0, 0).unwrap();
    assert_eq!(test.len, 1000);
    assert_eq!(test.labels.len(), 1000);
    assert_eq!(test.classes, 10);
}

#[test]
fn bundled_fashion_mnist_converted() {
    let test = load_image_dataset(None, Split::Test, 3, 32, 32).unwrap();
    assert_eq!((test.len, test.channels, test.height, test.width), (1000, 3, 32, 32));
    assert_eq!(test.images.len(), 1000 * 3 * 32 * 32);

    // Grey replicated to RGB: the three planes of every image are equal.
    let image = test.image(17);
    let plane = 32 * 32;
    assert_eq!(&image[..plane], &image[plane..2 * plane]);
    assert_eq!(&image[..plane], &image[2 * plane..]);
}

// ---------------------------------------------------------------------------------------------
// Normalisation and subsets

fn tiny_dataset() -> ImageDataset {
    // Two 2-channel 1x2 images: channel 0 contains 0, 1, 2, 3 and channel 1 contains 5
    // everywhere but one 7.
    ImageDataset {
        images: vec![0.0, 1.0, 5.0, 5.0, 2.0, 3.0, 5.0, 7.0],
        labels: vec![1, 0],
        len: 2,
        channels: 2,
        height: 1,
        width: 2,
        classes: 2,
        class_names: vec!["a".into(), "b".into()],
    }
}

#[test]
fn channel_stats_and_normalize() {
    let mut dataset = tiny_dataset();
    let stats = dataset.channel_stats();
    assert!((stats.mean[0] - 1.5).abs() < 1e-6, "{stats:?}");
    assert!((stats.std[0] - 1.25f32.sqrt()).abs() < 1e-6, "{stats:?}");
    assert!((stats.mean[1] - 5.5).abs() < 1e-6, "{stats:?}");
    assert!((stats.std[1] - 0.75f32.sqrt()).abs() < 1e-6, "{stats:?}");

    dataset.normalize(&stats).unwrap();
    let after = dataset.channel_stats();
    for c in 0..2 {
        assert!(after.mean[c].abs() < 1e-6, "{after:?}");
        assert!((after.std[c] - 1.0).abs() < 1e-5, "{after:?}");
    }
}

#[test]
fn normalize_rejects_zero_std() {
    let mut dataset = tiny_dataset();
    let stats = fiak::data::ChannelStats {
        mean: vec![0.0, 0.0],
        std: vec![1.0, 0.0],
    };
    let message = error_text(dataset.normalize(&stats));
    assert!(message.contains("channel 1"), "{message}");
}

#[test]
fn subset_copies_images() {
    let dataset = tiny_dataset();
    let subset = dataset.subset(&[1, 1, 0]).unwrap();
    assert_eq!(subset.len, 3);
    assert_eq!(subset.labels, vec![0, 0, 1]);
    assert_eq!(subset.image(0), dataset.image(1));
    assert_eq!(subset.image(2), dataset.image(0));
    assert_eq!(subset.class_names, dataset.class_names);
    assert!(dataset.subset(&[2]).is_err());
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

/// Builds one CIFAR-10 record whose red, green and blue planes are constant 10 + i, 20 + i and
/// 30 + i.
fn cifar_record(label: u8, i: u8) -> Vec<u8> {
    let mut record = vec![label];
    for base in [10u8, 20, 30] {
        record.extend(std::iter::repeat_n(base + i, 1024));
    }
    record
}

#[test]
fn cifar_records_parse() {
    let mut bytes = cifar_record(3, 0);
    bytes.extend(cifar_record(9, 1));
    let (pixels, labels) = cifar::parse_records(Path::new("memory"), &bytes).unwrap();

    assert_eq!(labels, vec![3, 9]);
    assert_eq!(pixels.len(), 2 * 3072);
    // Planes are red, green, blue, in that order.
    assert_eq!(pixels[0], 10.0 / 255.0);
    assert_eq!(pixels[1024], 20.0 / 255.0);
    assert_eq!(pixels[2048 + 1023], 30.0 / 255.0);
    assert_eq!(pixels[3072 + 1024], 21.0 / 255.0);
}

#[test]
fn cifar_corrupt_batch_rejected() {
    let mut truncated = cifar_record(1, 0);
    truncated.pop();
    let message = error_text(cifar::parse_records(Path::new("data_batch_7.bin"), &truncated));
    assert!(message.contains("data_batch_7.bin"), "{message}");
    assert!(message.contains("3073"), "{message}");

    let bad_label = cifar_record(12, 0);
    let message = error_text(cifar::parse_records(Path::new("data_batch_8.bin"), &bad_label));
    assert!(message.contains("label 12"), "{message}");
}

#[test]
fn cifar_directory_loads() {
    let dir = TempDir::new("cifar");
    let batches = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).unwrap();
    for (name, labels) in [
        ("data_batch_1.bin", vec![0u8, 1]),
        ("data_batch_2.bin", vec![2]),
        ("test_batch.bin", vec![9]),
    ] {
        let bytes: Vec<u8> = labels.iter().flat_map(|&l| cifar_record(l, l)).collect();
        std::fs::write(batches.join(name), bytes).unwrap();
    }

    let train = load_image_dataset(Some(dir.path()), Split::Train, 0, 0, 0).unwrap();
    assert_eq!((train.len, train.channels, train.height, train.width), (3, 3, 32, 32));
    assert_eq!(train.labels, vec![0, 1, 2]);
    assert_eq!(train.class_names[0], "airplane");
    assert_eq!(train.image(2)[0], 12.0 / 255.0);

    let test = load_image_dataset(Some(dir.path()), Split::Test, 1, 16, 16).unwrap();
    assert_eq!((test.len, test.channels, test.height, test.width), (1, 1, 16, 16));
    assert_eq!(test.labels, vec![9]);
}

// ---------------------------------------------------------------------------------------------
// Image folders

fn write_png(path: &Path, width: u32, height: u32, rgb: bool, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if rgb {
        image::RgbImage::from_pixel(width, height, image::Rgb([value, value, value]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_pixel(width, height, image::Luma([value]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn image_folder_sizes_converted() {
    let dir = TempDir::new("folder");
    let root = dir.path();
    write_png(&root.join("train/cat/a.png"), 8, 8, true, 100);
    write_png(&root.join("train/cat/b.png"), 12, 10, false, 100);
    write_png(&root.join("train/dog/c.png"), 12, 10, false, 200);
    std::fs::write(root.join("train/dog/notes.txt"), "not an image").unwrap();
    write_png(&root.join("test/dog/d.png"), 5, 7, true, 50);

    let train = load_image_dataset(Some(root), Split::Train, 1, 16, 16).unwrap();
    assert_eq!((train.len, train.channels, train.height, train.width), (3, 1, 16, 16));
    assert_eq!(train.class_names, vec!["cat", "dog"]);
    assert_eq!(train.labels, vec![0, 0, 1]);
    // Constant images stay constant through the resize and the grey conversion.
    for (i, value) in [(0, 100.0), (1, 100.0), (2, 200.0)] {
        assert!(
            train.image(i).iter().all(|&x| (x - value / 255.0).abs() < 1e-6),
            "image {i} should be {value}/255 everywhere"
        );
    }

    let test = load_image_dataset(Some(root), Split::Test, 3, 4, 6).unwrap();
    assert_eq!((test.len, test.channels, test.height, test.width), (1, 3, 4, 6));
    assert_eq!(test.labels, vec![1], "test classes follow the order of train/");
    assert_eq!(test.classes, 2);

    // With 0 the first image decides the size: a.png is 8x8 RGB.
    let native = load_image_dataset(Some(root), Split::Train, 0, 0, 0).unwrap();
    assert_eq!((native.channels, native.height, native.width), (3, 8, 8));
    let native_test = load_image_dataset(Some(root), Split::Test, 0, 0, 0).unwrap();
    assert_eq!(
        (native_test.channels, native_test.height, native_test.width),
        (3, 8, 8),
        "the test split takes its shape from train/ too"
    );
}

#[test]
fn image_folder_split_reproducible() {
    let dir = TempDir::new("folder-split");
    for i in 0..20 {
        let class = if i % 2 == 0 { "even" } else { "odd" };
        write_png(&dir.path().join(format!("{class}/{i:02}.png")), 3, 3, false, i as u8);
    }

    let train = load_image_dataset(Some(dir.path()), Split::Train, 1, 3, 3).unwrap();
    let test = load_image_dataset(Some(dir.path()), Split::Test, 1, 3, 3).unwrap();
    assert_eq!(train.len, 18);
    assert_eq!(test.len, 2);

    // Each image carries its index as pixel value, so the splits are disjoint and complete.
    let ids = |d: &ImageDataset| -> Vec<u32> { (0..d.len).map(|i| (d.image(i)[0] * 255.0).round() as u32).collect() };
    let mut all: Vec<u32> = ids(&train).into_iter().chain(ids(&test)).collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<u32>>());

    let again = load_image_dataset(Some(dir.path()), Split::Test, 1, 3, 3).unwrap();
    assert_eq!(ids(&again), ids(&test));
}

#[test]
fn image_folder_empty_class_rejected() {
    let dir = TempDir::new("folder-empty");
    write_png(&dir.path().join("full/a.png"), 4, 4, false, 1);
    std::fs::create_dir_all(dir.path().join("hollow")).unwrap();
    std::fs::write(dir.path().join("hollow/readme.txt"), "no images here").unwrap();

    let message = error_text(load_image_dataset(Some(dir.path()), Split::Train, 1, 4, 4));
    assert!(message.contains("hollow"), "{message}");
    assert!(message.contains("empty class folder"), "{message}");
}

#[test]
fn image_dataset_missing_dir_rejected() {
    let dir = TempDir::new("missing");
    let missing = dir.path().join("nowhere");
    let message = error_text(load_image_dataset(Some(&missing), Split::Train, 1, 4, 4));
    assert!(message.contains("nowhere"), "{message}");
    assert!(message.contains("not found"), "{message}");

    let message = error_text(load_image_dataset(None, Split::Train, 2, 4, 4));
    assert!(message.contains("channels"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Text

fn bundled_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/text/moby-dick.txt.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn byte_tokenizer_bundled_round_trip() {
    let corpus = load_text(None, TokenizerKind::Byte).unwrap();
    let text = bundled_text();
    assert_eq!(corpus.vocab_size, 256);
    assert_eq!(corpus.tokenizer, TokenizerKind::Byte);

    let total = corpus.train.len() + corpus.validation.len();
    assert_eq!(total, text.len());
    assert_eq!(corpus.validation.len(), text.len() / 10, "the last 10% is validation");

    let mut tokens = corpus.train.clone();
    tokens.extend(&corpus.validation);
    assert_eq!(TokenizerKind::Byte.decode(&tokens).unwrap(), text);
    assert!(text.starts_with(&TokenizerKind::Byte.decode(&corpus.train[..20]).unwrap()));
}

#[test]
fn byte_tokenizer_rejects_large_token() {
    let message = error_text(TokenizerKind::Byte.decode(&[65, 256]));
    assert!(message.contains("256"), "{message}");
}

#[test]
fn bpe_sentence_round_trip() {
    let gpt2 = TokenizerKind::Gpt2;
    assert_eq!(gpt2.encode("Hello world"), vec![15496, 995]);

    let sentence = "Call me Ishmael. Some years ago\u{2014}never mind how long precisely\u{2014}I sailed.";
    let tokens = gpt2.encode(sentence);
    assert!(tokens.len() < sentence.len() / 2, "{tokens:?}");
    assert!(tokens.iter().all(|&t| (t as usize) < gpt2.vocab_size()));
    assert_eq!(gpt2.decode(&tokens).unwrap(), sentence);

    assert_eq!(gpt2.decode(&[50256]).unwrap(), "<|endoftext|>");
    assert!(gpt2.decode(&[50257]).is_err());
}

#[test]
fn tokenizer_names_parse() {
    assert_eq!("byte".parse::<TokenizerKind>().unwrap(), TokenizerKind::Byte);
    assert_eq!("GPT2".parse::<TokenizerKind>().unwrap(), TokenizerKind::Gpt2);
    assert!("sentencepiece".parse::<TokenizerKind>().is_err());
    assert_eq!(TokenizerKind::default(), TokenizerKind::Byte);
    assert_eq!(serde_json::to_string(&TokenizerKind::Gpt2).unwrap(), "\"gpt2\"");
}

#[test]
fn short_corpus_rejected() {
    let dir = TempDir::new("short-text");
    let path = dir.path().join("tiny.txt");
    std::fs::write(&path, "a short corpus of forty bytes, no more.").unwrap();

    let corpus = load_text(Some(&path), TokenizerKind::Byte).unwrap();
    assert_eq!(corpus.train.len() + corpus.validation.len(), 39);
    assert_eq!(corpus.validation.len(), 3);

    corpus.check_context(2).unwrap();
    let message = error_text(corpus.check_context(64));
    assert!(message.contains("tiny.txt"), "{message}");
    assert!(message.contains("36 byte tokens"), "{message}");
    assert!(message.contains("context of 64"), "{message}");
}

#[test]
fn invalid_utf8_rejected() {
    let dir = TempDir::new("utf8");
    let path = dir.path().join("broken.txt.gz");
    std::fs::write(&path, gzip(b"fine text \xff then more")).unwrap();

    let message = error_text(load_text(Some(&path), TokenizerKind::Byte));
    assert!(message.contains("broken.txt.gz"), "{message}");
    assert!(message.contains("byte offset 10"), "{message}");
}

#[test]
fn text_folder_and_wikitext() {
    let dir = TempDir::new("text-folder");
    std::fs::write(dir.path().join("b.txt"), "second document. ").unwrap();
    std::fs::write(dir.path().join("a.txt.gz"), gzip(b"first document. ")).unwrap();
    std::fs::write(dir.path().join("ignored.md"), "not read").unwrap();

    let corpus = load_text(Some(dir.path()), TokenizerKind::Byte).unwrap();
    let mut tokens = corpus.train.clone();
    tokens.extend(&corpus.validation);
    assert_eq!(
        TokenizerKind::Byte.decode(&tokens).unwrap(),
        "first document. second document. ",
        "files are read in name order"
    );

    let gpt2 = load_text(Some(dir.path()), TokenizerKind::Gpt2).unwrap();
    assert_eq!(gpt2.vocab_size, 50257);
    assert!(gpt2.train.contains(&50256), "documents are separated by <|endoftext|>");

    let wiki = TempDir::new("wikitext");
    std::fs::write(wiki.path().join("wiki.train.tokens"), " = Title = \n training text \n").unwrap();
    std::fs::write(wiki.path().join("wiki.valid.tokens"), " valid \n").unwrap();
    std::fs::write(wiki.path().join("wiki.test.tokens"), " test \n").unwrap();
    let corpus = load_text(Some(wiki.path()), TokenizerKind::Byte).unwrap();
    assert_eq!(TokenizerKind::Byte.decode(&corpus.validation).unwrap(), " valid \n");
    assert_eq!(corpus.train.len(), " = Title = \n training text \n".len());
}

// ---------------------------------------------------------------------------------------------
// Loaders

fn numbered_dataset(n: usize) -> Arc<ImageDataset> {
    // Image i is one pixel of value i, with label i % 4.
    Arc::new(ImageDataset {
        images: (0..n).map(|i| i as f32).collect(),
        labels: (0..n).map(|i| (i % 4) as u32).collect(),
        len: n,
        channels: 1,
        height: 1,
        width: 1,
        classes: 4,
        class_names: (0..4).map(|c| c.to_string()).collect(),
    })
}

fn image_order(loader: &mut ImageLoader, batches: usize) -> Vec<f32> {
    (0..batches).flat_map(|_| loader.next_batch().images).collect()
}

#[test]
fn image_loader_seeded_order() {
    let dataset = numbered_dataset(10);
    let mut a = ImageLoader::new(dataset.clone(), 3, true, 7).unwrap();
    let mut b = ImageLoader::new(dataset.clone(), 3, true, 7).unwrap();
    let mut c = ImageLoader::new(dataset.clone(), 3, true, 8).unwrap();
    let (order_a, order_b, order_c) = (image_order(&mut a, 9), image_order(&mut b, 9), image_order(&mut c, 9));
    assert_eq!(order_a, order_b, "same seed, same order");
    assert_ne!(order_a, order_c, "different seed, different order");

    // Each epoch of 3 full batches visits 9 distinct images, and a new epoch reshuffles.
    let mut epoch: Vec<f32> = order_a[..9].to_vec();
    epoch.sort_by(f32::total_cmp);
    epoch.dedup();
    assert_eq!(epoch.len(), 9);
    assert_ne!(order_a[..9], order_a[9..18]);
    assert_eq!(a.epoch(), 2);

    let batch = ImageLoader::new(dataset.clone(), 3, false, 0).unwrap().next_batch();
    assert_eq!(batch.images, vec![0.0, 1.0, 2.0]);
    assert_eq!(batch.labels, vec![0, 1, 2]);
    assert_eq!(batch.shape, [3, 1, 1, 1]);
}

#[test]
fn image_loader_restore_continues() {
    let dataset = numbered_dataset(10);
    let mut loader = ImageLoader::new(dataset.clone(), 4, true, 11).unwrap();
    image_order(&mut loader, 5);
    let state = loader.state();
    let expected = image_order(&mut loader, 6);

    let json = serde_json::to_string(&state).unwrap();
    let state: LoaderState = serde_json::from_str(&json).unwrap();
    let mut restored = ImageLoader::restore(dataset, 4, true, &state).unwrap();
    assert_eq!(image_order(&mut restored, 6), expected);
}

/// Images 3 x 4 whose pixel (y, x) is 100 * i + 10 * y + x + 1, so zero marks fill.
fn gradient_dataset(n: usize) -> Arc<ImageDataset> {
    let (h, w) = (3, 4);
    let images = (0..n)
        .flat_map(|i| (0..h * w).map(move |p| (100 * i + 10 * (p / w) + p % w + 1) as f32))
        .collect();
    Arc::new(ImageDataset {
        images,
        labels: vec![0; n],
        len: n,
        channels: 1,
        height: h,
        width: w,
        classes: 1,
        class_names: vec!["0".to_string()],
    })
}

#[test]
fn image_augment_flips_and_shifts() {
    let dataset = gradient_dataset(8);
    let flip = Augment { flip: true, shift: 0 };
    let batch = ImageLoader::new(dataset.clone(), 8, false, 3)
        .unwrap()
        .with_augment(flip)
        .next_batch();
    let mut flipped = 0;
    for (i, image) in batch.images.chunks(12).enumerate() {
        let original = &dataset.images[i * 12..(i + 1) * 12];
        let mirrored: Vec<f32> = original.chunks(4).flat_map(|row| row.iter().rev().copied()).collect();
        assert!(
            image == original || image == mirrored.as_slice(),
            "image {i}: {image:?}"
        );
        flipped += (image == mirrored.as_slice()) as usize;
    }
    assert!((1..8).contains(&flipped), "{flipped} of 8 images flipped");

    // A shift of 1 moves the content by at most one pixel and fills the rest with zeros.
    let shift = Augment { flip: false, shift: 1 };
    let batch = ImageLoader::new(dataset.clone(), 8, false, 3)
        .unwrap()
        .with_augment(shift)
        .next_batch();
    let mut moved = 0;
    for (i, image) in batch.images.chunks(12).enumerate() {
        let original = &dataset.images[i * 12..(i + 1) * 12];
        let found = (-1isize..=1)
            .flat_map(|dy| (-1isize..=1).map(move |dx| (dy, dx)))
            .any(|(dy, dx)| {
                (0..12).all(|p| {
                    let (y, x) = ((p / 4) as isize - dy, (p % 4) as isize - dx);
                    let want = if (0..3).contains(&y) && (0..4).contains(&x) {
                        original[(y * 4 + x) as usize]
                    } else {
                        0.0
                    };
                    image[p] == want
                })
            });
        assert!(found, "image {i} is no shift of the original: {image:?}");
        moved += (image != original) as usize;
    }
    assert!(moved > 0, "no image moved");
}

#[test]
fn image_augment_resumes_exactly() {
    let dataset = gradient_dataset(10);
    let augment = Augment { flip: true, shift: 1 };
    let mut loader = ImageLoader::new(dataset.clone(), 4, true, 5)
        .unwrap()
        .with_augment(augment);
    image_order(&mut loader, 3);
    let state = loader.state();
    let expected = image_order(&mut loader, 5);
    let mut restored = ImageLoader::restore(dataset, 4, true, &state)
        .unwrap()
        .with_augment(augment);
    assert_eq!(image_order(&mut restored, 5), expected);
}

#[test]
fn image_loader_rejects_large_batch() {
    let message = error_text(ImageLoader::new(numbered_dataset(3), 4, true, 0).map(|_| ()));
    assert!(message.contains("--batch-size"), "{message}");
}

#[test]
fn image_eval_batches_cover_dataset() {
    let dataset = numbered_dataset(10);
    let batches: Vec<_> = image_eval_batches(&dataset, 4).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].shape, [2, 1, 1, 1]);
    let all: Vec<f32> = batches.iter().flat_map(|b| b.images.clone()).collect();
    assert_eq!(all, dataset.images);
}

#[test]
fn text_loader_windows() {
    let tokens: Arc<Vec<u32>> = Arc::new((0..100).collect());
    let mut loader = TextLoader::new(tokens.clone(), 4, 8, 3).unwrap();
    let batch = loader.next_batch();
    assert_eq!((batch.batch_size, batch.context), (4, 8));
    assert_eq!(batch.inputs.len(), 32);
    for (window, target) in batch.inputs.chunks(8).zip(batch.targets.chunks(8)) {
        for i in 0..8 {
            assert_eq!(target[i], window[i] + 1, "targets are inputs shifted by one");
        }
        for i in 1..8 {
            assert_eq!(window[i], window[i - 1] + 1, "windows are contiguous");
        }
        assert!(window[0] <= 91);
    }

    // A window of context + 1 = 100 tokens fits exactly once.
    let mut whole = TextLoader::new(tokens.clone(), 2, 99, 3).unwrap();
    assert_eq!(whole.next_batch().inputs[..99], tokens[..99]);
    assert!(TextLoader::new(tokens, 2, 100, 3).is_err());
}

#[test]
fn text_loader_seeded_order() {
    let tokens: Arc<Vec<u32>> = Arc::new((0..1000).collect());
    let draw = |seed: u64| -> Vec<u32> {
        let mut loader = TextLoader::new(tokens.clone(), 3, 5, seed).unwrap();
        (0..4).flat_map(|_| loader.next_batch().inputs).collect()
    };
    assert_eq!(draw(1), draw(1), "same seed, same windows");
    assert_ne!(draw(1), draw(2), "different seed, different windows");
}

#[test]
fn text_loader_restore_continues() {
    let tokens: Arc<Vec<u32>> = Arc::new((0..500).collect());
    let mut loader = TextLoader::new(tokens.clone(), 2, 6, 5).unwrap();
    loader.next_batch();
    loader.next_batch();
    let state = loader.state();
    let expected: Vec<_> = (0..3).map(|_| loader.next_batch()).collect();

    let mut restored = TextLoader::restore(tokens, 2, 6, &state).unwrap();
    let resumed: Vec<_> = (0..3).map(|_| restored.next_batch()).collect();
    assert_eq!(resumed, expected);
}

#[test]
fn prefetcher_matches_loader() {
    let dataset = numbered_dataset(13);
    let mut plain = ImageLoader::new(dataset.clone(), 5, true, 21).unwrap();
    let expected = image_order(&mut plain, 8);

    let mut prefetched = ImageLoader::new(dataset.clone(), 5, true, 21).unwrap().prefetch(2);
    let first: Vec<f32> = (0..3).flat_map(|_| prefetched.next_batch().images).collect();
    assert_eq!(first, expected[..15]);

    // The state covers the batches handed out, not those prepared ahead on the thread.
    let state = prefetched.state();
    let rest: Vec<f32> = (0..5).flat_map(|_| prefetched.next_batch().images).collect();
    assert_eq!(rest, expected[15..]);
    drop(prefetched);

    let mut resumed = ImageLoader::restore(dataset, 5, true, &state).unwrap().prefetch(0);
    let again: Vec<f32> = (0..5).flat_map(|_| resumed.next_batch().images).collect();
    assert_eq!(again, expected[15..]);

    let tokens: Arc<Vec<u32>> = Arc::new((0..300).collect());
    let mut plain = TextLoader::new(tokens.clone(), 2, 4, 9).unwrap();
    let mut prefetched = TextLoader::new(tokens, 2, 4, 9).unwrap().prefetch(1);
    for _ in 0..4 {
        assert_eq!(prefetched.next_batch(), plain.next_batch());
    }
    assert_eq!(prefetched.state(), plain.state());
}

#[test]
fn text_eval_batches_in_order() {
    let tokens: Vec<u32> = (0..23).collect();
    let batches: Vec<_> = text_eval_batches(&tokens, 2, 5).collect();
    // (23 - 1) / 5 = 4 windows, in batches of 2.
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].inputs, (0..10).collect::<Vec<u32>>());
    assert_eq!(batches[1].targets, (11..21).collect::<Vec<u32>>());
}

#[test]
fn image_folder_too_small_rejected() {
    let dir = TempDir::new("folder-one");
    write_png(&dir.path().join("only/a.png"), 2, 2, false, 9);

    let train = load_image_dataset(Some(dir.path()), Split::Train, 1, 2, 2).unwrap();
    assert_eq!(train.len, 1);
    let message = error_text(load_image_dataset(Some(dir.path()), Split::Test, 1, 2, 2));
    assert!(message.contains("too few images for a test split"), "{message}");
}
