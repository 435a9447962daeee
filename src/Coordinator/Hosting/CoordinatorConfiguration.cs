using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.Coordinator.Hosting;

/// <summary>Reads <see cref="CoordinatorSettings"/> from appsettings.json, LSM_ environment variables and the command line.</summary>
public static class CoordinatorConfiguration
{
    public static readonly IReadOnlyDictionary<string, string> Switches = new Dictionary<string, string>(ClusterNodeSettings.Switches)
    {
        ["--data-dir"] = "Coordinator:DataDirectory",
        ["--postgres"] = "Coordinator:PostgresConnectionString",
        ["--http"] = "Coordinator:HttpUrl",
        ["--max-per-host"] = "Coordinator:MaxMigrationsPerHost",
        ["--max-per-domain"] = "Coordinator:MaxMigrationsPerDomain",
    };

    public static CoordinatorSettings From(IConfiguration config)
    {
        var http = config["Coordinator:HttpUrl"] ?? "http://127.0.0.1:9110";
        if (!Uri.TryCreate(http, UriKind.Absolute, out var url) || url.Scheme != "http" || !url.IsLoopback)
            throw new ArgumentException($"HTTP address '{http}' must be an http:// loopback address (other addresses need the API token, which comes with the operator surfaces)");
        return new CoordinatorSettings(
            Path.GetFullPath(config["Coordinator:DataDirectory"] ?? Path.Combine("var", "coordinator")),
            config["Coordinator:PostgresConnectionString"] is { Length: > 0 } pg ? pg : null,
            http,
            ClusterNodeSettings.FromConfiguration(config, CoordinatorSettings.Role),
            new MigrationLimits(
                ParseInt(config["Coordinator:MaxMigrationsPerHost"], "max migrations per host", 0, 1000, MigrationLimits.Default.PerHost),
                ParseInt(config["Coordinator:MaxMigrationsPerDomain"], "max migrations per domain", 0, 1000, MigrationLimits.Default.PerDomain)),
            MigrationActorSettings.Default);
    }

    private static int ParseInt(string? text, string what, int min, int max, int fallback) =>
        text is null ? fallback
        : int.TryParse(text, out var n) && n >= min && n <= max ? n
        : throw new ArgumentException($"{what} '{text}' must be a whole number from {min} to {max}");
}
