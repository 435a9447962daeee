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
        ["--api-token-file"] = "Coordinator:ApiTokenFile",
        ["--viewer-token-file"] = "Coordinator:ViewerTokenFile",
        ["--api-certificate"] = "Coordinator:ApiCertificateFile",
        ["--api-key"] = "Coordinator:ApiKeyFile",
    };

    /// <summary>
    /// Refuses a secret given as an argument: a command line is readable by every user of the machine (/proc/PID/cmdline).
    /// The token comes from a file (--api-token-file, 0600) or the environment (LSM_Coordinator__ApiToken).
    /// </summary>
    public static void RefuseSecretArguments(IEnumerable<string> args)
    {
        foreach (var (option, variable) in new[] { ("--api-token", "LSM_Coordinator__ApiToken"), ("--viewer-token", "LSM_Coordinator__ViewerToken") })
            if (args.Any(a => a == option || a.StartsWith(option + "=", StringComparison.Ordinal)))
                throw new ArgumentException($"{option} is refused: a command line is readable by every user of this machine. Put the token in a file " +
                                            $"only you can read (chmod 600) and pass {option}-file FILE, or set env {variable}");
    }

    public static CoordinatorSettings From(IConfiguration config)
    {
        var http = config["Coordinator:HttpUrl"] ?? "http://127.0.0.1:9110";
        var token = config["Coordinator:ApiToken"] is { Length: > 0 } t ? t
            : config["Coordinator:ApiTokenFile"] is { Length: > 0 } file ? ApiTokenFile.Read(Path.GetFullPath(file))
            : null;
        var viewerToken = config["Coordinator:ViewerToken"] is { Length: > 0 } v ? v
            : config["Coordinator:ViewerTokenFile"] is { Length: > 0 } viewerFile ? ApiTokenFile.Read(Path.GetFullPath(viewerFile))
            : null;
        // A viewer token alone would leave changes open to anyone on loopback while reads need a token.
        if (viewerToken is not null && token is null)
            throw new ArgumentException("a viewer token (--viewer-token-file) needs an operator token too (--api-token-file FILE or env LSM_Coordinator__ApiToken)");
        if (viewerToken is not null && viewerToken == token)
            throw new ArgumentException("the viewer token equals the operator token: give the viewer a token of its own");
        if (!Uri.TryCreate(http, UriKind.Absolute, out var url) || url.Scheme is not ("http" or "https"))
            throw new ArgumentException($"HTTP address '{http}' must be an http:// or https:// URL such as http://127.0.0.1:9110");
        // Anyone who reaches a non-loopback address could start, cancel or abandon migrations: not without a token.
        if (!IsLoopback(url) && token is null)
            throw new ArgumentException($"HTTP address '{http}' is not loopback: set an API token (--api-token-file FILE, mode 0600, or env LSM_Coordinator__ApiToken) so that requests must carry it");
        var certificate = HttpsCertificate(config, url, http);
        return new CoordinatorSettings(
            Path.GetFullPath(config["Coordinator:DataDirectory"] ?? Path.Combine("var", "coordinator")),
            config["Coordinator:PostgresConnectionString"] is { Length: > 0 } pg ? pg : null,
            http,
            ClusterNodeSettings.FromConfiguration(config, CoordinatorSettings.Role),
            new MigrationLimits(
                ParseInt(config["Coordinator:MaxMigrationsPerHost"], "max migrations per host", 0, 1000, MigrationLimits.Default.PerHost),
                ParseInt(config["Coordinator:MaxMigrationsPerDomain"], "max migrations per domain", 0, 1000, MigrationLimits.Default.PerDomain)),
            MigrationActorSettings.Default) { ApiToken = token, ViewerToken = viewerToken, ApiCertificate = certificate };
    }

    /// <summary>
    /// The API's certificate for an https:// address, or null for http://. Beyond loopback the API speaks HTTPS only: its
    /// tokens and every disk's layout would otherwise cross the network in the clear.
    /// </summary>
    private static System.Security.Cryptography.X509Certificates.X509Certificate2? HttpsCertificate(IConfiguration config, Uri url, string http)
    {
        var certificateFile = config["Coordinator:ApiCertificateFile"] is { Length: > 0 } c ? Path.GetFullPath(c) : null;
        var keyFile = config["Coordinator:ApiKeyFile"] is { Length: > 0 } k ? Path.GetFullPath(k) : null;
        if (url.Scheme == "http")
        {
            if (!IsLoopback(url))
                throw new ArgumentException($"HTTP address '{http}' is not loopback: beyond loopback the API speaks HTTPS only, so that its tokens never cross " +
                                            $"the network in the clear. Use --http https://{url.Authority} with --api-certificate FILE --api-key FILE " +
                                            "(PEM; e.g. lsm tls issue coordinator-api --dir DIR --address HOST)");
            if (certificateFile is not null || keyFile is not null)
                throw new ArgumentException($"--api-certificate/--api-key are given but the API address '{http}' is http://: use https://");
            return null;
        }
        if (certificateFile is null)
            throw new ArgumentException($"HTTPS address '{http}' needs the API's certificate: --api-certificate FILE [--api-key FILE] (PEM)");
        return ApiCertificate.Load(certificateFile, keyFile);
    }

    /// <summary>127.0.0.1, ::1 or localhost; 0.0.0.0, * and + bind every interface.</summary>
    private static bool IsLoopback(Uri url) => url.IsLoopback && url.Host is not ("0.0.0.0" or "[::]");

    private static int ParseInt(string? text, string what, int min, int max, int fallback) =>
        text is null ? fallback
        : int.TryParse(text, out var n) && n >= min && n <= max ? n
        : throw new ArgumentException($"{what} '{text}' must be a whole number from {min} to {max}");
}
