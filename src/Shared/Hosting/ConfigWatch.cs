namespace LiveMigration.Shared.Hosting;

/// <summary>
/// The host builders' setting that turns off their watch of appsettings.json. By default they watch the content root (the
/// working directory) recursively; a node of a local cluster runs in its data directory, where the journal and every
/// node's log change all the time, and handling those events cost 13% of the Coordinator's CPU under load. Nobody edits a
/// running node's settings: a change is applied by a restart.
/// </summary>
public static class ConfigWatch
{
    public const string Off = "--hostBuilder:reloadConfigOnChange=false";
}
