//! `codexmesh apply` YAML: any text reads or is refused at a position in the file; documents
//! that read write back (`to_yaml`) to documents equal to them.
#![no_main]

use codexmesh_model::declarative;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match declarative::read_all([("f.yaml", text)]) {
        Ok(docs) => {
            let written = declarative::to_yaml(&docs);
            let again = declarative::read_all([("f.yaml", written.as_str())]);
            let Ok(again) = again else {
                panic!("wrote back\n{written}\nwhich reads as {again:?}");
            };
            let bodies = |d: &[declarative::Document]| {
                d.iter()
                    .map(|d| (d.name.clone(), d.body.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bodies(&docs), bodies(&again), "{written}");
        }
        Err(e) => assert!(e.to_string().starts_with("f.yaml")),
    }
});
