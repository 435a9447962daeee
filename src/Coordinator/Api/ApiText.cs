namespace LiveMigration.Coordinator.Api;

/// <summary>How the API quotes what a client sent back to it in a refusal.</summary>
public static class ApiText
{
    /// <summary>At most 80 characters of the client's text: enough to recognise it, never a way to make answers huge.</summary>
    public static string Clip(string text) => text.Length > 80 ? text[..80] + "…" : text;
}
