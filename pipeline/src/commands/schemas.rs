//! `inkstream schemas`: prints the event contract — the catalogue of types,
//! one type's Avro schema with an example, or docs/EVENTS.md.

use schemas::{EventType, payload};

/// What to print.
#[derive(clap::Subcommand)]
pub enum SchemasCommand {
    /// Every event type, its category and whether the pipeline derives it.
    List,
    /// One type's Avro schema (its payload record) and an example event.
    Show {
        /// The type, e.g. `writing.keystroke`; `envelope` for the published envelope.
        event_type: String,
    },
    /// docs/EVENTS.md, generated from the schemas.
    Docs,
}

/// Why a schema could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum SchemasError {
    /// Not in the catalogue (the message names the nearest known types).
    #[error("{0}")]
    UnknownType(schemas::UnknownType),
    /// A catalogued type without its schema file: the build is inconsistent.
    #[error("no schema file for the type")]
    NoSchemaFile,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl schemas::Classify for SchemasError {
    fn fault(&self) -> schemas::Fault {
        match self {
            SchemasError::UnknownType(_) => schemas::Fault::Caller,
            SchemasError::NoSchemaFile | SchemasError::Json(_) => schemas::Fault::Internal,
        }
    }
}

/// Prints what `command` asks for on stdout.
pub fn run(command: SchemasCommand) -> Result<(), SchemasError> {
    match command {
        SchemasCommand::List => {
            for t in EventType::all() {
                println!(
                    "{:<36} {:<14} {}",
                    t.name,
                    t.category.as_str(),
                    if t.derived { "derived" } else { "" }
                );
            }
        }
        SchemasCommand::Show { event_type } => {
            if event_type == "envelope" {
                println!("{}", schemas::confluent::published_schema());
                println!("schema id: {}", schemas::confluent::schema_id());
                return Ok(());
            }
            let t = EventType::lookup(&event_type).map_err(SchemasError::UnknownType)?;
            let file = payload::AVRO_PAYLOAD_SOURCES
                .iter()
                .zip(payload::TYPES)
                .find(|(_, ty)| **ty == t.name)
                .map(|((_, text), _)| *text)
                .ok_or(SchemasError::NoSchemaFile)?;
            println!("{}", file.trim_end());
            if let Some((_, _, maximal)) = payload::examples()
                .into_iter()
                .find(|(ty, _, _)| *ty == t.name)
            {
                println!(
                    "\nexample data:\n{}",
                    serde_json::to_string_pretty(&maximal)?
                );
            }
        }
        SchemasCommand::Docs => print!("{}", schemas::docs::events_markdown()),
    }
    Ok(())
}
