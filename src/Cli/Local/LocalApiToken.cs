using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Local;

/// <summary>
/// Finds the token of a Coordinator on this machine that <c>lsm local up</c> (or anyone) started with
/// <c>--api-token-file</c>: the process serving the API's loopback address names its token file on its command line,
/// and the file (0600) is readable only by the user who made it. So the operator of a local cluster types nothing,
/// and another user of the machine gets no further than the file's permissions. Only processes of lsm's own user
/// count, so nobody else's process can have lsm read its token and send it to them.
/// </summary>
public static class LocalApiToken
{
    /// <summary>The token of the Coordinator serving <paramref name="api"/> on loopback, or null when none is found or readable.</summary>
    public static string? Find(Uri api)
    {
        if (!api.IsLoopback || !OperatingSystem.IsLinux() || ProcessTable.OwnUid is not { } self) return null;
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), out var pid)) continue;
            var arguments = ProcessTable.CommandLine(pid);
            if (Value(arguments, "--api-token-file") is not { } file || Value(arguments, "--http") is not { } http) continue;
            if (!Uri.TryCreate(http, UriKind.Absolute, out var served) || !served.IsLoopback || served.Port != api.Port) continue;
            // Only a Coordinator of this user: another user's process could name our token file and listen on the port
            // while ours is down, to be sent our token.
            if (ProcessTable.OwnerUid(pid) != self) continue;
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
