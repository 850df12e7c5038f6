//! The classic streaming word count: lines → words → key by word → running count → print.
//!
//! ```text
//! cargo run --release --example wordcount -- FILE [-w WORKERS]
//! ```
//!
//! Every line of output is `(word, count so far)`; the last line for a word is its total.
//! With `-w 2` the words are counted on two worker threads (each word on one of them).

use eddy_stream::{Source, StreamEnv};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = StreamEnv::from_args()?;
    let Some(path) = env.args().first().cloned() else {
        eprintln!("usage: wordcount FILE [-w WORKERS]");
        std::process::exit(2);
    };
    env.execute("wordcount", move |env| {
        env.source(Source::lines_of_file(path.clone()))
            .flat_map(|line: String| {
                line.split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
            })
            .key_by(|word: &String| word.clone())
            .count()
            .print();
    })?;
    Ok(())
}
