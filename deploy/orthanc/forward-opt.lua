-- Orthanc: forward every OCT series (Modality OPT) to kdoct once it is stable (no new instance for
-- Orthanc's StableAge seconds). Only OPT: kdoct's own results (SR, DOC) and every other modality stay
-- in the PACS, so nothing loops. The modality "kdoct" is declared in DicomModalities
-- (docs/INTEGRATION.md). Orthanc retries nothing by itself: a failed send is in its jobs list.
function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'OPT' then
      SendToModality(seriesId, 'kdoct')
   end
end
