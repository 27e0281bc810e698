//! Run folders named in different ways by the lines of one training: the settings line prints
//! `save_dir` as the trainer resolved it (often absolute), while a resume names the checkpoint
//! as the user typed it (`runs/detect/train/weights/last.pt`, relative to the working
//! directory), and `Results saved to` / `Logging results to` print what Ultralytics was given.
//! Paths are compared lexically (the files are on another machine, or gone): normalised, and a
//! relative path matches an absolute one that ends with it.

/// The run folder a path names, normalised: a checkpoint under `weights/` names its run folder;
/// `.` components, repeated and trailing `/` are dropped, `..` is applied; Windows `\` is `/`.
pub fn run_dir(path: &str) -> String {
    let path = path.trim().trim_matches(['\'', '"']).replace('\\', "/");
    let absolute = is_absolute(&path);
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    // `.../weights/last.pt` (or best.pt, epoch10.pt): the run folder is above `weights/`.
    if parts.len() >= 2
        && parts[parts.len() - 2] == "weights"
        && parts.last().is_some_and(|f| f.ends_with(".pt"))
    {
        parts.truncate(parts.len() - 2);
    }
    let joined = parts.join("/");
    // A Windows drive path (`C:/...`) keeps its drive in front.
    if absolute && joined.as_bytes().get(1).is_none_or(|c| *c != b':') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// `/x`, or a Windows drive path `C:/x` (its `\` already made `/`).
fn is_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    b.first() == Some(&b'/')
        || (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'/')
}

/// How well two run folders match: `None` when they name different folders; otherwise the
/// number of components they share (an exact match scores highest).
pub fn match_score(a: &str, b: &str) -> Option<usize> {
    let (a, b) = (run_dir(a), run_dir(b));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a == b {
        return Some(usize::MAX);
    }
    let ca: Vec<&str> = a.trim_start_matches('/').split('/').collect();
    let cb: Vec<&str> = b.trim_start_matches('/').split('/').collect();
    // Two absolute paths are different folders unless equal; a relative path (or the tail of
    // one) matches the folder whose last components it is.
    if is_absolute(&a) && is_absolute(&b) {
        return None;
    }
    let (short, long) = if ca.len() <= cb.len() {
        (&ca, &cb)
    } else {
        (&cb, &ca)
    };
    if short.contains(&"..") {
        return None;
    }
    long.ends_with(short).then_some(short.len())
}

/// Whether two paths name the same run folder.
pub fn same(a: &str, b: &str) -> bool {
    match_score(a, b).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_run_folders() {
        for (path, want) in [
            ("runs/detect/train/weights/last.pt", "runs/detect/train"),
            ("./runs/detect/train/", "runs/detect/train"),
            (
                "/w/runs//detect/./train/weights/best.pt",
                "/w/runs/detect/train",
            ),
            ("/w/x/../runs/detect/train", "/w/runs/detect/train"),
            ("runs\\detect\\train\\weights\\last.pt", "runs/detect/train"),
            ("'runs/detect/train'", "runs/detect/train"),
            ("../runs/train", "../runs/train"),
            (
                r"C:\Users\ml\runs\detect\train\weights\last.pt",
                "C:/Users/ml/runs/detect/train",
            ),
        ] {
            assert_eq!(run_dir(path), want, "{path}");
        }
    }

    #[test]
    fn relative_and_absolute_forms_of_one_folder_match() {
        let abs = "/tmp/tw-users/runs/detect/train";
        for other in [
            "runs/detect/train/weights/last.pt",
            "./runs/detect/train",
            "detect/train/",
            "train",
            "/tmp/tw-users/runs/detect/train/",
        ] {
            assert!(same(abs, other), "{other}");
        }
        assert!(same(
            r"C:\Users\ml\runs\detect\train",
            r"runs\detect\train\weights\last.pt"
        ));
        assert!(!same(
            r"C:\Users\ml\runs\detect\train",
            r"D:\Users\ml\runs\detect\train"
        ));
        for other in [
            "runs/detect/train2",
            "runs/segment/train",
            "/other/runs/detect/train",
            "../detect/train",
            "",
        ] {
            assert!(!same(abs, other), "{other}");
        }
        // The longer shared tail is the better match.
        assert!(match_score(abs, "detect/train").unwrap() > match_score(abs, "train").unwrap());
        assert_eq!(match_score(abs, abs), Some(usize::MAX));
    }
}
