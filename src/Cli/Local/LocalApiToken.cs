using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Local;

/// <summary>
/// Finds the token of a Coordinator on this machine that <c>lsm local up</c> (or anyone) started with
/// <c>--api-token-file</c>: the process serving the API's loopback address names its token file on its command line,
/// and the file (0600) is readable only by the user who made it. So the operator of a local cluster types nothing,
/// and another user of the machine gets no further than the file's permissions.
/// </summary>
public static class LocalApiToken
{
    /// <summary>The token of the Coordinator serving <paramref name="api"/> on loopback, or null when none is found or readable.</summary>
    public static string? Find(Uri api)
    {
        if (!api.IsLoopback || !OperatingSystem.IsLinux()) return null;
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), out var pid)) continue;
            var arguments = ProcessTable.CommandLine(pid);
            if (Value(arguments, "--api-token-file") is not { } file || Value(arguments, "--http") is not { } http) continue;
            if (!Uri.TryCreate(http, UriKind.Absolute, out var served) || !served.IsLoopback || served.Port != api.Port) continue;
            try
            {
                return ApiTokenFile.Read(file);
            }
            catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }
        return null;
    }

    private static string? Value(IReadOnlyList<string> arguments, string option)
    {
        for (var i = 0; i < arguments.Count - 1; i++)
            if (arguments[i] == option) return arguments[i + 1];
        return null;
    }
}
