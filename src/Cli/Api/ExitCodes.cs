namespace LiveMigration.Cli.Api;

/// <summary>What <c>lsm</c> returns, so scripts can tell a failed operation from a typo or a Coordinator that is down.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    public const int OperationFailed = 1;
    /// <summary>Bad usage, or input the API refused (any 4xx: unknown id, conflict, not enough space): nothing was changed.</summary>
    public const int BadUsage = 2;
    public const int ApiUnreachable = 3;
}

/// <summary>
/// Ends a command with an exit code and a one-line message for the operator; thrown anywhere in a command and
/// turned into the process's exit code in one place (Program.cs).
/// </summary>
public sealed class CliFailure(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;

    public static CliFailure BadUsage(string message) => new(ExitCodes.BadUsage, message);
    public static CliFailure Failed(string message) => new(ExitCodes.OperationFailed, message);
}
